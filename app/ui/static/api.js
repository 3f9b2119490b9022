// The public /v1 API with the signed-in key: JSON calls, blob downloads and SSE over fetch().
// EventSource cannot send an Authorization header, so streams are read with a ReadableStream reader.

const KEY = "distillery.apiKey";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) { if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.title || `HTTP ${status}`);
    Object.assign(this, { status, title: problem.title, detail: problem.detail, code: problem.code,
      errors: problem.errors || [] });
  }
}

let onUnauthorized = () => {};
export function whenUnauthorized(callback) { onUnauthorized = callback; }

async function send(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const init = { method, signal, headers: { Authorization: `Bearer ${session.key}`, ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let problem = {};
    try { problem = await response.json(); } catch { problem = { title: `${response.status} ${response.statusText}` }; }
    if (response.status === 401) onUnauthorized();
    throw new ApiError(response.status, problem);
  }
  return response;
}

export async function api(path, options) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

export async function downloadBlob(path) {
  return (await send(path)).blob();
}

// Save a blob under `name` through a temporary object URL (the key never appears in a URL).
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// Follow a job's events: calls onEvent({seq, kind, data, created_at}) for each, resolves when the server
// ends the stream (the job ended), rejects on an HTTP error. `after` resumes after that sequence number.
export async function streamEvents(jobId, { after = 0, signal, onEvent }) {
  const response = await send(`/v1/jobs/${encodeURIComponent(jobId)}/events/stream?after=${after}`,
    { headers: { Accept: "text/event-stream" }, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) onEvent(JSON.parse(data.join("\n")));
    }
  }
}

// Follow a job until it ends, reconnecting after a dropped stream or a refusal (e.g. 429) with a backoff.
export async function followJob(jobId, { signal, onEvent, after = 0 }) {
  let last = after;
  let delay = 1000;
  let ended = false;
  const seen = (e) => { last = e.seq; delay = 1000; ended = ended || TERMINAL.has(e.kind); onEvent(e); };
  while (!signal.aborted) {
    try {
      await streamEvents(jobId, { after: last, signal, onEvent: seen });
      if (ended) return;
      await new Promise((resolve) => setTimeout(resolve, delay));  // closed early: resume after `last`
    } catch (err) {
      if (signal.aborted || (err instanceof ApiError && [401, 403, 404].includes(err.status))) return;
      const retryAfter = err instanceof ApiError && err.status === 429 ? 5000 : delay;
      await new Promise((resolve) => setTimeout(resolve, retryAfter));
      delay = Math.min(delay * 2, 15000);
    }
  }
}
