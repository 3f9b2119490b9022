"""report.png (curves per task, teacher/student/baseline bars) and a self-contained report.html."""

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any


def _read_history(metrics_csv: Path) -> list[dict[str, str]]:
    with metrics_csv.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _stage_colour(stage: str) -> str | None:
    """The same colour for a model in the curves and the bars: teachers grey, student blue, baseline orange."""
    if stage.startswith("teacher"):
        return "#555555"
    return {"student": "#1f77b4", "baseline": "#ff7f0e"}.get(stage)


def _figure_png(results: dict[str, Any], history: list[dict[str, str]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 7.0), squeeze=False)
    stages = list(dict.fromkeys(row["stage"] for row in history))
    for col, task in enumerate(tasks):
        info = results["tasks"][task]
        column = f"{task}.{info['metric']}"
        curve_ax, bar_ax = axes[0][col], axes[1][col]
        for stage in stages:
            rows = [r for r in history if r["stage"] == stage and r.get(column) not in (None, "")]
            if rows:
                curve_ax.plot([int(r["epoch"]) for r in rows], [float(r[column]) for r in rows], label=stage,
                              color=_stage_colour(stage))
        curve_ax.set_title(f"{task}: validation {info['metric']} per epoch ({'higher' if info['higher_is_better'] else 'lower'} is better)",
                           fontsize=9)
        curve_ax.set_xlabel("epoch")
        curve_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        curve_ax.legend(fontsize=7)
        names = [n for n in ("teacher", "student", "baseline") if info.get(n) is not None]
        values = [info[n] for n in names]
        bars = bar_ax.bar(names, values, color=[_stage_colour(n) for n in names])
        bar_ax.bar_label(bars, fmt="%.4f", fontsize=8)
        bar_ax.set_title(f"{task}: test {info['metric']}", fontsize=9)
    fig.suptitle(f"{results.get('job_id') or 'local run'}: teacher vs student vs baseline", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _html(results: dict[str, Any], png: bytes) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(task)}</td><td>{html.escape(info['metric'])} {'↑' if info['higher_is_better'] else '↓'}</td>"
        f"<td>{_fmt(info.get('teacher'))}</td><td>{_fmt(info.get('student'))}</td><td>{_fmt(info.get('baseline'))}</td></tr>"
        for task, info in results["tasks"].items())
    stages = "".join(f"<tr><td>{html.escape(s['name'])}</td><td>{s['epochs']}</td><td>{s['steps']}</td>"
                     f"<td>{s['best_epoch']}</td><td>{'yes' if s['stopped_early'] else 'no'}</td>"
                     f"<td>{s['seconds']:.2f}</td></tr>" for s in results.get("stages", []))
    diagnostics = "".join(f"<li>{html.escape(line)}</li>" for line in results.get("diagnostics", []))
    diagnosed = (f'<h2>Diagnostics</h2><ul class="diagnostics">{diagnostics}</ul>' if diagnostics
                 else "<p>No diagnostics: nothing in these results looked wrong.</p>")
    rows_seen = results.get("rows", {})
    split_line = ", ".join(f"{name} {count}" for name, count in rows_seen.items())
    params = results.get("params", {})
    ratio = (params.get("teacher") or 0) / params["student"] if params.get("student") else None
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Distillery report {html.escape(str(results.get('job_id') or ''))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style></head>
<body><h1>Distillation report</h1>
<p>job <code>{html.escape(str(results.get('job_id')))}</code>, spec sha256 <code>{html.escape(str(results.get('spec_sha256', ''))[:16])}…</code></p>
<h2>Test split: teacher vs student vs baseline</h2>
<p>Every value below is measured once, on the test split, after training; the curves are on the
validation split, which chose the weights (selection: {html.escape(str(results.get('selection', 'last')))}).
Rows: {html.escape(split_line)}.</p>
<table><tr><th>task</th><th>metric</th><th>teacher</th><th>student</th><th>baseline</th></tr>{rows}</table>
<p>parameters: teacher(s) {params.get('teacher')}, student {params.get('student')}{f', compression {ratio:.1f}×' if ratio else ''}</p>
{diagnosed}
<h2>Stages</h2><table><tr><th>stage</th><th>epochs</th><th>steps</th><th>best epoch</th><th>stopped early</th><th>seconds</th></tr>{stages}</table>
<img alt="curves per task and final bars" src="data:image/png;base64,{image}" style="max-width:100%">
</body></html>
"""


def write_report(*, directory: Path, results: dict[str, Any]) -> list[Path]:
    """Write report.png and report.html next to results.json/metrics.csv in ``directory``."""
    history = _read_history(directory / "metrics.csv") if (directory / "metrics.csv").exists() else []
    png = _figure_png(results, history)
    png_path, html_path = directory / "report.png", directory / "report.html"
    png_path.write_bytes(png)
    html_path.write_text(_html(results, png), encoding="utf-8")
    return [png_path, html_path]
