// Per-task validation curves as inline SVG: one line per stage (teachers, student, baseline).

const NS = "http://www.w3.org/2000/svg";
const W = 360, H = 200, PAD = { left: 48, right: 12, top: 12, bottom: 28 };

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// The series a stage's points belong to: every teacher stage draws as "teacher".
export function seriesOf(stage) {
  if (stage.startsWith("teacher")) return "teacher";
  if (stage === "baseline") return "baseline";
  return "student";
}

// series: [{name: "teacher"|"student"|"baseline", label, points: [[epoch, value], ...]}]
export function curveChart({ task, metric, series }) {
  const all = series.flatMap((s) => s.points);
  const figure = document.createElement("figure");
  figure.className = "curve";
  figure.dataset.task = task;
  const caption = document.createElement("figcaption");
  caption.textContent = `${task} — validation ${metric || "metric"}`;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": caption.textContent });
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(1, ...xs), Math.max(2, ...xs)];
  let [y0, y1] = all.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  root.append(svg("line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, class: "axis" }));
  root.append(svg("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom, class: "axis" }));
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    root.append(svg("text", { x: PAD.left - 4, y: sy(y) + 4, class: "tick", "text-anchor": "end" }, y.toFixed(3)));
  }
  for (const x of [x0, x1]) {
    root.append(svg("text", { x: sx(x), y: H - PAD.bottom + 16, class: "tick", "text-anchor": "middle" }, String(x)));
  }
  root.append(svg("text", { x: W - PAD.right, y: H - 2, class: "tick", "text-anchor": "end" }, "epoch"));
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    const path = svg("path", { d, class: `line line-${s.name}` });
    path.dataset.series = s.name;
    path.append(svg("title", {}, s.label));
    root.append(path);
    const [lx, ly] = s.points[s.points.length - 1];
    root.append(svg("circle", { cx: sx(lx), cy: sy(ly), r: 2.5, class: `dot line-${s.name}` }));
  }
  const legend = document.createElement("ul");
  legend.className = "legend";
  for (const s of series) {
    const item = document.createElement("li");
    item.className = `key-${s.name}`;
    item.textContent = s.label;
    legend.append(item);
  }
  figure.append(caption, root, legend);
  return figure;
}
