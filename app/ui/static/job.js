// One job: live status and curves, cancel, results table, diagnostics, artifact downloads, the spec.

import { api, downloadBlob, followJob, saveBlob, TERMINAL } from "./api.js";
import { curveChart, seriesOf } from "./chart.js";
import { clear, el, fmtBytes, fmtNumber, fmtTime, problemView, statusBadge } from "./dom.js";

const LABELS = { teacher: "teacher", student: "student", baseline: "baseline" };

// Validation curves per task, from the job's "epoch" events: {task: {series: [[epoch, value]]}}.
class Curves {
  constructor() { this.tasks = new Map(); }

  add(event) {
    const { stage, epoch, metrics } = event.data;
    for (const [task, value] of Object.entries(metrics || {})) {
      if (typeof value !== "number") continue;
      if (!this.tasks.has(task)) this.tasks.set(task, new Map());
      const series = this.tasks.get(task);
      const name = seriesOf(stage);
      if (!series.has(name)) series.set(name, { name, label: LABELS[name], stages: new Set(), points: [] });
      const s = series.get(name);
      s.stages.add(stage);
      // A later stage of the same series (e.g. "student" after "student:trunk") replaces the earlier one's line.
      if (s.points.length && s.lastStage !== stage) s.points = [];
      s.lastStage = stage;
      s.points.push([epoch, value]);
    }
  }

  render(box, metricOf) {
    const order = ["teacher", "student", "baseline"];
    box.replaceChildren(...[...this.tasks].map(([task, series]) => curveChart({
      task, metric: metricOf(task),
      series: order.filter((n) => series.has(n)).map((n) => series.get(n)),
    })));
    if (!this.tasks.size) box.replaceChildren(el("p", { className: "empty", text: "No epoch finished yet." }));
  }
}

function resultsTable(results) {
  const rows = Object.entries(results.tasks || {}).map(([task, r]) => el("tr", { "data-task": task },
    el("td", { text: task }), el("td", { text: r.metric }),
    el("td", { className: "num", text: fmtNumber(r.teacher) }), el("td", { className: "num", text: fmtNumber(r.student) }),
    el("td", { className: "num", text: fmtNumber(r.baseline) })));
  const params = results.params || {};
  return el("div", {},
    el("table", { id: "results-table" },
      el("thead", {}, el("tr", {}, ["Task", "Metric", "Teacher", "Student", "Baseline"].map((h) => el("th", { text: h })))),
      el("tbody", {}, rows)),
    el("p", { className: "muted", text: `parameters: teacher ${params.teacher ?? "–"}, student ${params.student ?? "–"}`
      + ` · test rows ${results.rows?.test ?? "–"} · trained in ${results.timing?.total_seconds?.toFixed(1) ?? "–"} s` }));
}

function artifactList(jobId, artifacts, message) {
  return el("table", { id: "artifacts" },
    el("thead", {}, el("tr", {}, ["File", "Size", "sha256", ""].map((h) => el("th", { text: h })))),
    el("tbody", {}, artifacts.map((a) => el("tr", { "data-artifact": a.name },
      el("td", { text: a.name }), el("td", { className: "num", text: fmtBytes(a.size) }),
      el("td", {}, el("code", { title: a.sha256, text: a.sha256.slice(0, 12) })),
      el("td", {}, el("button", { type: "button", className: "download", "data-name": a.name, text: "Download",
        onclick: async () => {
          try {
            saveBlob(await downloadBlob(`/v1/jobs/${encodeURIComponent(jobId)}/artifacts/${encodeURIComponent(a.name)}`), a.name);
          } catch (err) { message.replaceChildren(problemView(err)); }
        } }))))));
}

export async function renderJob(view, { signal, jobId }) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
  const title = el("h1", { id: "job-name" });
  const status = el("span", { id: "job-status" });
  const progress = el("progress", { id: "job-progress", max: "1", value: "0" });
  const stage = el("span", { id: "job-stage", className: "muted" });
  const cancel = el("button", { type: "button", id: "cancel", className: "danger", hidden: true, text: "Cancel job" });
  const confirm = el("button", { type: "button", id: "cancel-confirm", className: "danger", hidden: true, text: "Yes, cancel it" });
  const message = el("div", { id: "job-message" });
  const error = el("div", { id: "job-error" });
  const curvesBox = el("div", { id: "curves", className: "curves" });
  const resultsBox = el("div", { id: "results" }, el("p", { className: "empty", text: "Results appear when the job succeeds." }));
  const diagnostics = el("ul", { id: "diagnostics" });
  const artifactsBox = el("div", { id: "artifacts-box" });
  const spec = el("pre", { id: "spec" });
  const meta = el("p", { className: "muted", id: "job-meta" });
  clear(view).append(
    el("section", { className: "card" }, el("p", {}, el("a", { href: "#/jobs", text: "← all jobs" })),
      el("div", { className: "toolbar" }, title, status), el("div", { className: "toolbar" }, progress, stage, cancel, confirm),
      meta, message, error),
    el("section", { className: "card" }, el("h2", { text: "Curves" }), curvesBox),
    el("section", { className: "card" }, el("h2", { text: "Results (test split)" }), resultsBox,
      el("h3", { text: "Diagnostics" }), diagnostics),
    el("section", { className: "card" }, el("h2", { text: "Artifacts" }), artifactsBox),
    el("section", { className: "card" }, el("h2", { text: "Spec" }), spec));

  let job;
  const metricOf = () => null;
  const show = (j) => {
    job = j;
    title.textContent = j.name;
    status.replaceChildren(statusBadge(j.status));
    progress.value = j.progress ?? 0;
    stage.textContent = j.stage ? `${Math.round((j.progress ?? 0) * 100)}% · ${j.stage}` : `${Math.round((j.progress ?? 0) * 100)}%`;
    cancel.hidden = TERMINAL.has(j.status) || j.cancel_requested;
    if (TERMINAL.has(j.status)) confirm.hidden = true;
    meta.textContent = `${j.id} · created ${fmtTime(j.created_at)}${j.finished_at ? ` · finished ${fmtTime(j.finished_at)}` : ""}`
      + (j.cancel_requested && !TERMINAL.has(j.status) ? " · cancel requested" : "");
    error.replaceChildren(...(j.error ? [el("div", { className: "problem", role: "alert" },
      el("strong", { text: j.error.code }), el("p", { text: j.error.message }))] : []));
  };
  const loadEnded = async () => {
    show(await api(path, { signal }));
    const artifacts = await api(`${path}/artifacts`, { signal });
    artifactsBox.replaceChildren(artifacts.length ? artifactList(jobId, artifacts, message)
      : el("p", { className: "empty", text: "No artifacts." }));
    if (job.status !== "succeeded") return;
    const results = await api(`${path}/results`, { signal });
    resultsBox.replaceChildren(resultsTable(results));
    diagnostics.replaceChildren(...(results.diagnostics?.length
      ? results.diagnostics.map((d) => el("li", { text: d })) : [el("li", { className: "muted", text: "none" })]));
    const metrics = Object.fromEntries(Object.entries(results.tasks || {}).map(([t, r]) => [t, r.metric]));
    curves.render(curvesBox, (t) => metrics[t]);
  };

  cancel.addEventListener("click", () => { confirm.hidden = false; });
  confirm.addEventListener("click", async () => {
    confirm.hidden = true;
    try { show(await api(`${path}/cancel`, { method: "POST", signal })); } catch (err) { message.replaceChildren(problemView(err)); }
  });

  try {
    show(await api(path, { signal }));
  } catch (err) {
    if (!signal.aborted) message.replaceChildren(problemView(err));
    return;
  }
  spec.textContent = JSON.stringify(job.spec, null, 2);
  const curves = new Curves();
  curves.render(curvesBox, metricOf);
  // The stream replays the job's events from the start, then follows it live; it ends after the last one.
  await followJob(jobId, { signal, onEvent: (e) => {
    const next = { ...job };
    const ended = TERMINAL.has(job.status);  // replaying an ended job's events: its status stays final
    if (e.kind === "epoch") {
      curves.add(e);
      curves.render(curvesBox, metricOf);
      if (!ended) Object.assign(next, { progress: e.data.progress, stage: e.data.stage });
    } else if (ended) return;
    else if (e.kind === "stage_started") next.stage = e.data.stage;
    else if (e.kind === "started") next.status = "running";
    else if (e.kind === "requeued") next.status = "queued";
    else if (e.kind === "cancel_requested") next.cancel_requested = true;
    else if (TERMINAL.has(e.kind)) next.status = e.kind;
    show(next);
  } });
  if (!signal.aborted) {
    try { await loadEnded(); } catch (err) { if (!signal.aborted) message.replaceChildren(problemView(err)); }
  }
}
