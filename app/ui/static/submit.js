// Submit a spec: JSON in a textarea, checked by POST /v1/jobs/validate before POST /v1/jobs.

import { api } from "./api.js";
import { clear, el, problemView } from "./dom.js";

// A job that trains in seconds on a CPU (examples/digits-mt-tiny.json, smaller).
const STARTER = {
  name: "digits-tiny",
  dataset: { builtin: "digits-mt" },
  tasks: [
    { name: "digit", kind: "multiclass", num_classes: 10 },
    { name: "parity", kind: "multiclass", num_classes: 2 },
    { name: "large", kind: "binary" },
  ],
  teachers: [{ name: "teacher", tasks: ["digit", "parity", "large"],
    source: { train: { arch: { type: "mlp", hidden: [64] }, epochs: 3 } } }],
  student: { type: "mlp", trunk: [16], head: [] },
  distillation: { strategy: "task_kd", temperature: 4.0, alpha: 0.5 },
  training: { epochs: 3, batch_size: 128, lr: 0.003, seed: 0 },
  baseline: true,
  export: ["safetensors"],
};

// crypto.randomUUID needs a secure context; getRandomValues works over plain http too.
function randomKey() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function summaryView(result) {
  const s = result.summary || {};
  const items = Object.entries(s).map(([k, v]) => el("li", {}, el("code", { text: k }), " ",
    typeof v === "object" ? JSON.stringify(v) : String(v)));
  return el("div", { className: "ok", id: "validate-ok" }, el("strong", { text: "Valid." }), el("ul", {}, items));
}

export function renderSubmit(view, { signal }) {
  const text = el("textarea", { id: "spec-text", rows: "24", spellcheck: "false", "aria-label": "job spec (JSON)" });
  text.value = JSON.stringify(STARTER, null, 2);
  const out = el("div", { id: "submit-result" });
  const validate = el("button", { type: "button", id: "validate", text: "Validate" });
  const submit = el("button", { type: "button", id: "submit", className: "primary", text: "Validate and submit" });
  clear(view).append(el("section", { className: "card" }, el("h1", { text: "Submit a job" }),
    el("p", { className: "muted", text: "A job spec as JSON (see docs/spec.md). It is validated (a dry run) before it is queued." }),
    text, el("div", { className: "toolbar" }, validate, submit), out));

  const parsed = () => {
    try {
      return JSON.parse(text.value);
    } catch (err) {
      out.replaceChildren(problemView({ title: "The spec is not valid JSON", detail: err.message }));
      return null;
    }
  };
  const check = async (spec) => {
    try {
      const result = await api("/v1/jobs/validate", { method: "POST", json: spec, signal });
      out.replaceChildren(summaryView(result));
      return true;
    } catch (err) {
      out.replaceChildren(problemView(err));
      return false;
    }
  };
  const busy = (on) => { validate.disabled = on; submit.disabled = on; };
  validate.addEventListener("click", async () => {
    const spec = parsed();
    if (!spec) return;
    busy(true);
    out.replaceChildren(el("p", { className: "muted", text: "Validating…" }));
    await check(spec);
    busy(false);
  });
  submit.addEventListener("click", async () => {
    const spec = parsed();
    if (!spec) return;
    busy(true);
    out.replaceChildren(el("p", { className: "muted", text: "Validating…" }));
    try {
      if (!(await check(spec))) return;
      // The same key when the same text is sent again: the API answers with the job it already made.
      if (submit.dataset.body !== text.value) Object.assign(submit.dataset, { key: randomKey(), body: text.value });
      const headers = { "Idempotency-Key": submit.dataset.key };
      const job = await api("/v1/jobs", { method: "POST", json: spec, headers, signal });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      out.replaceChildren(problemView(err));
    } finally {
      busy(false);
    }
  });
}
