// The jobs list: a status filter, newest first, live status and progress for the jobs still running.

import { api, followJob, TERMINAL } from "./api.js";
import { clear, el, fmtTime, problemView, statusBadge } from "./dom.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
// Browsers open at most 6 HTTP/1.1 connections per origin and each stream holds one, so only the first
// few unfinished jobs are streamed; the rest are refreshed with the list every REFRESH_MS.
const MAX_STREAMS = 3;
const REFRESH_MS = 5000;

function progressCell(job) {
  const bar = el("progress", { max: "1", value: String(job.progress ?? 0), className: "progress" });
  const pct = `${Math.round((job.progress ?? 0) * 100)}%`;
  return [bar, el("span", { className: "pct", text: pct }), el("span", { className: "stage", text: job.stage || "" })];
}

class JobRows {
  constructor(tbody, signal) {
    Object.assign(this, { tbody, signal, rows: new Map(), streams: new Set() });
  }

  // Insert or update a row in place (rows keep their identity, so live updates never rebuild the table).
  upsert(job, { atTop = false } = {}) {
    let row = this.rows.get(job.id);
    if (!row) {
      row = el("tr", { "data-job-id": job.id },
        el("td", {}, el("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, className: "job-name", text: job.name })),
        el("td", { className: "status" }), el("td", { className: "progress-cell" }),
        el("td", { text: fmtTime(job.created_at) }), el("td", {}, el("code", { text: job.id })));
      this.rows.set(job.id, row);
      if (atTop) this.tbody.prepend(row); else this.tbody.append(row);
    }
    this.paint(row, job);
    if (!TERMINAL.has(job.status)) this.follow(job);
  }

  paint(row, job) {
    row.dataset.status = job.status;
    row.querySelector(".status").replaceChildren(statusBadge(job.status));
    row.querySelector(".progress-cell").replaceChildren(...progressCell(job));
  }

  follow(job) {
    if (this.streams.has(job.id) || this.streams.size >= MAX_STREAMS) return;
    this.streams.add(job.id);
    const state = { ...job };
    const onEvent = (e) => {
      if (e.kind === "epoch") Object.assign(state, { progress: e.data.progress, stage: e.data.stage });
      else if (e.kind === "stage_started") state.stage = e.data.stage;
      else if (e.kind === "started") state.status = "running";
      else if (e.kind === "requeued") state.status = "queued";
      else if (TERMINAL.has(e.kind)) state.status = e.kind;
      if (e.kind === "succeeded") state.progress = 1;
      const row = this.rows.get(job.id);
      if (row) this.paint(row, state);
    };
    followJob(job.id, { signal: this.signal, onEvent }).finally(() => this.streams.delete(job.id));
  }
}

export async function renderJobs(view, { signal, params }) {
  const status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
  const filter = el("select", { id: "status-filter", "aria-label": "status" },
    el("option", { value: "", text: "all statuses" }), STATUSES.map((s) => el("option", { value: s, text: s })));
  filter.value = status;
  filter.addEventListener("change", () => { location.hash = filter.value ? `#/jobs?status=${filter.value}` : "#/jobs"; });
  const tbody = el("tbody", { id: "jobs-body" });
  const more = el("button", { type: "button", id: "more", hidden: true, text: "Load more" });
  const message = el("div", { id: "jobs-message" });
  clear(view).append(el("section", { className: "card" },
    el("div", { className: "toolbar" }, el("h1", { text: "Jobs" }), filter),
    message,
    el("table", { className: "jobs" },
      el("thead", {}, el("tr", {}, ["Name", "Status", "Progress", "Created", "Id"].map((h) => el("th", { text: h })))),
      tbody),
    more));

  const rows = new JobRows(tbody, signal);
  const query = (after) => {
    const q = new URLSearchParams({ limit: "20" });
    if (status) q.set("status", status);
    if (after) q.set("after", after);
    return `/v1/jobs?${q}`;
  };
  let lastId = null;
  const loadPage = async (after) => {
    const page = await api(query(after), { signal });
    for (const job of page.data) rows.upsert(job);
    if (page.data.length) lastId = page.data[page.data.length - 1].id;
    more.hidden = !page.has_more;
    if (!rows.rows.size) message.replaceChildren(el("p", { className: "empty", text: "No jobs yet." }));
  };
  more.addEventListener("click", () => loadPage(lastId).catch((err) => message.replaceChildren(problemView(err))));
  try {
    await loadPage(null);
  } catch (err) {
    if (!signal.aborted) message.replaceChildren(problemView(err));
    return;
  }
  // New jobs appear at the top, and unstreamed ones catch up, without rebuilding the rows.
  const refresh = setInterval(async () => {
    try {
      const page = await api(query(null), { signal });
      for (const job of page.data.slice().reverse()) {
        if (status && job.status !== status && !rows.rows.has(job.id)) continue;
        rows.upsert(job, { atTop: !rows.rows.has(job.id) });
      }
      if (rows.rows.size) message.replaceChildren();
    } catch { /* the next tick tries again */ }
  }, REFRESH_MS);
  signal.addEventListener("abort", () => clearInterval(refresh));
}
