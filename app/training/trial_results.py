"""A light search trial (spec.trial): its validation-only results.json and its stored student state.

A light trial reports what a search ranks trials by: each task's validation metric for teacher
and student, params, and (when asked) the student's CPU latency on validation rows. It skips the
test evaluation, the exports, the report and the TensorBoard archive, and stores its trained
student stage(s) as trial-state.pt. A `finalise` job of the same spec loads that state and runs
the rest of an ordinary job (test evaluation once, exports, report), for the trials a search
keeps: the test split is read for the front only.
"""

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.checkpoint import atomic_path, new_checkpoint
from app.training.datasets.splits import DatasetSplits
from app.training.errors import TrainingError
from app.training.evaluate import PRIMARY_METRICS, cpu_latency_us
from app.training.models import count_params
from app.training.results import (
    LATENCY_ROWS,
    TEXT_LATENCY_ROWS,
    Result,
    stage_rows,
    validation_metrics,
    write_metrics_csv,
)
from app.training.spec import JobSpec, spec_sha256
from app.training.spec_trial import TRIAL_STATE_NAME
from app.training.strategies import StagePlan
from app.training.target_scaling import TargetScale
from app.training.teacher_targets import TeacherTargets

FORMAT = 1


def core_sha256(spec: JobSpec) -> str:
    """The spec's hash without its trial section: a light trial and its finalise job share it."""
    return spec_sha256(spec.model_copy(update={"trial": None}))


def save_trial_state(state: dict[str, Any], plans: list[StagePlan], *, spec: JobSpec, out: Path) -> Path:
    """Write the student stage(s) (weights and counters) and the history to out/trial-state.pt."""
    students = [plan.name for plan in plans if plan.role != "teacher"]
    kept = {"format": FORMAT, "spec_sha256": core_sha256(spec), "elapsed": state["elapsed"],
            "finished": {name: state["finished"][name] for name in students},
            "history": [row for row in state["history"] if row["stage"] in students]}
    path = out / TRIAL_STATE_NAME
    with atomic_path(path) as tmp:
        torch.save(kept, tmp)
    return path


def state_from_trial(path: Path, *, spec: JobSpec, sha: str) -> dict[str, Any]:
    """Return a checkpoint state (checkpoint.py's layout) whose student stages are the light
    trial's, so train() evaluates and exports them instead of training them again."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(code="trial_state_unreadable", message=f"trial.from_job: {TRIAL_STATE_NAME} "
                                                                   f"could not be read ({type(exc).__name__})") from exc
    if stored.get("format") != FORMAT or stored.get("spec_sha256") != core_sha256(spec):
        raise TrainingError(code="trial_state_mismatch", message="trial.from_job: that job ran another spec "
                                                                 "(a finalise job repeats its light trial's spec)")
    state = new_checkpoint(spec_sha256=sha)
    state.update(elapsed=stored["elapsed"], finished=dict(stored["finished"]), history=list(stored["history"]))
    return state


def write_light_results(*, spec: JobSpec, out: Path, plans: list[StagePlan], models: dict[str, nn.Module],
                        state: dict[str, Any], targets: TeacherTargets, data: DatasetSplits,
                        scales: dict[str, TargetScale], rows: dict[str, int], job_id: str | None, sha: str,
                        device: str, placements: dict[str, str], elapsed: float,
                        parallel: dict[str, Any] | None = None) -> Result:
    """Write a light trial's results.json (validation only; "tasks" carry no test numbers),
    metrics.csv and trial-state.pt; return the Result."""
    out.mkdir(exist_ok=True)
    student = models["student"]
    latency = None
    if spec.trial is not None and spec.trial.latency:
        assert data.x_val is not None
        rows_timed = TEXT_LATENCY_ROWS if data.text is not None else LATENCY_ROWS  # as results.py on test
        latency = round(cpu_latency_us([student], data.x_val[:rows_timed]), 3)
    params = {t.name: built.params for t, built in zip(spec.teachers, targets.teachers)}
    results = {
        "job_id": job_id,
        "spec_sha256": sha,
        "trial": "light",
        # Test is read once, at the end, for the trials a search keeps (their finalise jobs).
        "tasks": {task.name: {"metric": PRIMARY_METRICS[task.kind][0],
                              "higher_is_better": PRIMARY_METRICS[task.kind][1],
                              "teacher": None, "student": None, "baseline": None} for task in spec.tasks},
        "validation": validation_metrics(spec, models, targets, data, scales),
        "params": {"teacher": sum(count for count in params.values() if count is not None),
                   "student": count_params(student), "teachers": params},
        "stages": stage_rows(plans, state["finished"]),
        "selection": spec.training.selection,
        "timing": {"total_seconds": round(elapsed, 3)},
        "latency_us_per_sample": {"teacher": None, "student": latency},  # validation rows, if asked
        "teacher_cache": targets.cache_status,
        "rows": rows,
        "diagnostics": list(targets.notes),
        "device": device,
        "precision": spec.training.precision,
        "data_placement": placements,
        **(parallel or {"world_size": 1}),
    }
    path = out / "results.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    return Result(results=results, artifacts=[path, write_metrics_csv(state["history"], out / "metrics.csv"),
                                              save_trial_state(state, plans, spec=spec, out=out)])
