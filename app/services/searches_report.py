"""A finished search's artifacts: search.json, pareto.csv and pareto.png, in the artifact store."""

import csv
import io
import json
import tempfile
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import Search, SearchArtifact, SearchTrial
from app.search_schemas import SearchCreate, SearchOut
from app.services.searches_study import pareto_front
from app.storage import get_store

MEDIA_TYPES = {"search.json": "application/json", "pareto.csv": "text/csv", "pareto.png": "image/png"}


def write_artifacts(*, db: Session, search: Search, trials: list[SearchTrial], request: SearchCreate,
                    settings: Settings) -> None:
    """Write the three files and their rows (again, whole, when a step that died wrote some)."""
    out = SearchOut.from_search(search, trials).model_dump(mode="json")
    out["status"] = "finished"  # the file is written as the search ends; GET /v1/searches/{id} has the status
    files = {"search.json": (json.dumps(out, indent=2) + "\n").encode(),
             "pareto.csv": pareto_csv(search, trials, request).encode(),
             "pareto.png": pareto_png(trials, request)}
    store = get_store(settings)
    db.execute(delete(SearchArtifact).where(SearchArtifact.search_id == search.id))
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            path = Path(tmp) / name
            path.write_bytes(content)
            stored = store.save(job_id=search.id, name=name, source=path)
            db.add(SearchArtifact(search_id=search.id, name=name, path=stored.key, size=stored.size,
                                  sha256=stored.sha256, media_type=MEDIA_TYPES[name]))


def pareto_csv(search: Search, trials: list[SearchTrial], request: SearchCreate) -> str:
    """One row per trial on the front: its values, validation and test retention, size, latency, params,
    and the finalise job that holds its exported student (a light search's)."""
    front = set((search.summary or {}).get("pareto", []))
    tasks = [task.name for task in request.base.tasks]
    objectives = [f"{o.direction}_{o.metric}" for o in request.goal.objectives]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "job_id", *objectives, "val_mean_retention", *[f"val_retention_{t}" for t in tasks],
                     "test_mean_retention", *[f"test_retention_{t}" for t in tasks], "params", "latency_us",
                     "search_params", "final_job_id"])
    for trial in trials:
        if trial.number not in front:
            continue
        found, test = trial.measures or {}, trial.test or {}
        writer.writerow([trial.number, trial.job_id, *(trial.values or []), found.get("mean_retention"),
                         *[found.get("retention", {}).get(t) for t in tasks], test.get("mean_retention"),
                         *[test.get("retention", {}).get(t) for t in tasks], found.get("params"),
                         found.get("latency_us"), json.dumps(trial.params, sort_keys=True), trial.final_job_id])
    return buffer.getvalue()


def plot_axis(request: SearchCreate) -> str:
    """Latency when the goal is about latency and not about size; params otherwise."""
    metrics = {o.metric for o in request.goal.objectives}
    about_latency = "latency_us" in metrics or request.goal.max_latency_us is not None
    about_size = "params" in metrics or request.goal.max_params is not None
    return "latency_us" if about_latency and not about_size else "params"


def pareto_png(trials: list[SearchTrial], request: SearchCreate) -> bytes:
    """Mean validation retention against params (or latency): feasible points, infeasible ones as
    crosses, and the front of the feasible ones in these two axes drawn as a step line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: this may run in a worker's thread

    axis = plot_axis(request)
    points: dict[str, list[tuple[float, float, int]]] = {"complete": [], "infeasible": []}
    for trial in trials:
        found = trial.measures or {}
        if trial.state in points and found.get("mean_retention") is not None and found.get(axis) is not None:
            points[trial.state].append((float(found[axis]), float(found["mean_retention"]), trial.number))
    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    feasible = points["complete"]
    if feasible:
        ax.scatter([p[0] for p in feasible], [p[1] for p in feasible], c="tab:blue", label="feasible trial")
    if points["infeasible"]:
        ax.scatter([p[0] for p in points["infeasible"]], [p[1] for p in points["infeasible"]], c="tab:red",
                   marker="x", label="infeasible trial")
    keyed = {p[2]: [p[1], p[0]] for p in feasible}
    front = sorted((keyed[n][1], keyed[n][0]) for n in pareto_front(keyed, ["maximize", "minimize"]))
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", c="black", lw=1.2,
                label=f"front (retention vs {axis})")
        ax.scatter([p[0] for p in front], [p[1] for p in front], facecolors="none", edgecolors="black", s=90)
    if request.goal.max_params is not None and axis == "params":
        ax.axvline(request.goal.max_params, ls="--", c="grey", label="max_params")
    if request.goal.max_latency_us is not None and axis == "latency_us":
        ax.axvline(request.goal.max_latency_us, ls="--", c="grey", label="max_latency_us")
    if axis == "params" and feasible:
        ax.set_xscale("log")
    ax.set_xlabel("student parameters" if axis == "params" else "student CPU latency per sample (us)")
    ax.set_ylabel("mean retention (validation)")
    ax.set_title(f"{request.name}: {len(trials)} trials")
    ax.grid(alpha=0.3)
    if feasible or points["infeasible"]:
        ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

