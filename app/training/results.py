"""results.json and metrics.csv: what a finished job reports, and the artifacts it writes.

Every number in results.json's "tasks" is measured on the test split, once, at the end; the
curves in metrics.csv are validation metrics (see stage.py).
"""

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.checkpoint import atomic_path
from app.training.datasets.splits import DatasetSplits
from app.training.diagnostics import diagnose
from app.training.evaluate import (PRIMARY_METRICS, all_task_metrics, compare_tasks, cpu_latency_us,
                                   predict, task_metrics)
from app.training.export import (CONFIG_NAME, ONNX_NAME, answer_in_original_units, write_onnx,
                                 write_safetensors, write_student_config)
from app.training.export_text import write_text_exports
from app.training.models import count_params
from app.training.report import write_report
from app.training.spec import JobSpec
from app.training.strategies import StagePlan
from app.training.target_scaling import TargetScale
from app.training.teacher_targets import TeacherTargets
from app.training.teachers import ModelTeacher, OnnxTeacher

LATENCY_ROWS = 8192
TEXT_LATENCY_ROWS = 256


@dataclass
class Result:
    """What a finished job produced: results.json's content and the artifact files."""

    results: dict[str, Any]
    artifacts: list[Path]


def history_row(plan: StagePlan, epoch: int, seconds: float, metrics: dict[str, float],
                losses: dict[str, float]) -> dict[str, Any]:
    """Return one metrics.csv row: stage, epoch, seconds, validation primary metric per task
    (absent on epochs that were not evaluated), loss terms."""
    row: dict[str, Any] = {"stage": plan.name, "epoch": epoch, "seconds": round(seconds, 4)}
    for task in plan.tasks:
        if task.name in metrics:
            row[f"{task.name}.{PRIMARY_METRICS[task.kind][0]}"] = metrics[task.name]
    # learned task weights keep their own name ("weight.<task>"); loss terms get "loss."
    row.update({name if name.startswith("weight.") else f"loss.{name}": value
                for name, value in losses.items()})
    return row


def teacher_latency_us(teachers: Sequence[Any], x: torch.Tensor, *, repeats: int = 5) -> float | None:
    """Return the CPU time per row to run every teacher that runs (precomputed ones do not)."""
    models = [t.model for t in teachers if isinstance(t, ModelTeacher)]
    total = cpu_latency_us(models, x) if models else 0.0
    sessions = [t for t in teachers if isinstance(t, OnnxTeacher)]
    for teacher in sessions:
        teacher.outputs(x)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            teacher.outputs(x)
            best = min(best, time.perf_counter() - start)
        total += best / len(x) * 1e6
    return round(total, 3) if models or sessions else None


def write_results(*, spec: JobSpec, out: Path, plans: list[StagePlan],
                  models: dict[str, nn.Module], finished: dict[str, dict[str, Any]],
                  history: list[dict[str, Any]], targets: TeacherTargets, data: DatasetSplits,
                  scales: dict[str, TargetScale], rows: dict[str, int], job_id: str | None,
                  sha: str, device: str, placements: dict[str, str],
                  elapsed: float, parallel: dict[str, Any] | None = None) -> Result:
    """Export the student, evaluate teacher, student and baseline on test (once), write
    metrics.csv, results.json and the report; return the Result."""
    out.mkdir(exist_ok=True)
    student = models["student"]
    artifacts = [write_student_config(arch=spec.student, tasks=spec.tasks, input_shape=data.input_shape,
                                      directory=out, target_scales=scales, layout=data.layout)]
    if "safetensors" in spec.export:
        artifacts.append(write_safetensors(student, directory=out))
    if data.text is not None:  # token-id inputs, tokenizer.json (export_text.py)
        artifacts += write_text_exports(
            student, tasks=spec.tasks, text=data.text, config_path=out / CONFIG_NAME,
            onnx_path=out / ONNX_NAME if "onnx" in spec.export else None, target_scales=scales,
            original_units=answer_in_original_units)
    elif "onnx" in spec.export:
        artifacts.append(write_onnx(student, task_names=[task.name for task in spec.tasks],
                                    input_shape=data.input_shape, directory=out, target_scales=scales))
    artifacts.append(write_metrics_csv(history, out / "metrics.csv"))

    def metrics_of(model: nn.Module) -> dict[str, dict[str, float | None]]:
        return all_task_metrics(predict(model, data.x_test), data.y_test, spec.tasks, scales=scales)

    teacher_test = targets.soft["test"]
    covered = [task for task in spec.tasks if task.name in teacher_test.logits]
    teacher = all_task_metrics(teacher_test.logits, data.y_test, covered, scales=scales)
    teacher.update({task.name: None for task in spec.tasks if task.name not in teacher})
    params = {t.name: built.params for t, built in zip(spec.teachers, targets.teachers)}
    # Rows on disk ("disk" placement): latency on the first LATENCY_ROWS test rows, read once.
    latency_x = data.x_test if isinstance(data.x_test, torch.Tensor) else data.x_test[:LATENCY_ROWS]
    if data.text is not None:  # a pretrained transformer teacher: ~1 GFLOP a row; a sample times it
        latency_x = latency_x[:TEXT_LATENCY_ROWS]
    tasks = compare_tasks(spec.tasks, student=metrics_of(student), teacher=teacher,
                          baseline=metrics_of(models["baseline"]) if "baseline" in models else None)
    results = {
        "job_id": job_id,
        "spec_sha256": sha,
        "tasks": tasks,  # test split
        "validation": validation_metrics(spec, models, targets, data, scales),
        "params": {
            "teacher": sum(count for count in params.values() if count is not None),
            "student": count_params(student),
            "teachers": params,  # None: precomputed outputs, size unknown
        },
        "stages": stage_rows(plans, finished),
        "selection": spec.training.selection,
        "timing": {"total_seconds": 0.0},
        "latency_us_per_sample": {  # CPU, whole test split per call; teacher = all teachers
            "teacher": teacher_latency_us(targets.teachers, latency_x),
            "student": round(cpu_latency_us([student], latency_x), 3),
        },
        "teacher_cache": targets.cache_status,  # per teacher: hit, miss or precomputed
        "rows": rows,  # train, validation, test, labelled and transfer rows
        "diagnostics": [*targets.notes, *diagnose(spec.tasks, tasks, data.y_test)],
        "device": device,
        "precision": spec.training.precision,  # the training step's (precision.py)
        "data_placement": placements,  # stage -> "device" | "stream" (stages trained by this call)
        # world_size and per-rank training throughput (distributed.Ranks.report); a worker's placement
        **(parallel or {"world_size": 1}),
    }
    results["timing"]["total_seconds"] = round(elapsed, 3)
    results_path = out / "results.json"
    with atomic_path(results_path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    reports = write_report(directory=out, results=results)
    return Result(results=results, artifacts=[results_path, *artifacts, *reports])


def stage_rows(plans: list[StagePlan], finished: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Return results.json's "stages": each stage's epochs, steps, best epoch and seconds."""
    return [{"name": plan.name, "epochs": finished[plan.name]["epochs"], "steps": finished[plan.name]["steps"],
             "best_epoch": finished[plan.name]["best_epoch"],
             "stopped_early": finished[plan.name]["stopped_early"],
             "seconds": round(finished[plan.name]["seconds"], 3)} for plan in plans]


def validation_metrics(spec: JobSpec, models: dict[str, nn.Module], targets: TeacherTargets,
                data: DatasetSplits, scales: dict[str, TargetScale]) -> dict[str, dict[str, Any]]:
    """Return each task's primary metric on validation for teacher, student and baseline: the
    numbers a search or a tuning loop may choose by (results.json "tasks" is test, not for that)."""
    assert data.x_val is not None and data.y_val is not None
    teacher_val = targets.soft["val"].logits
    covered = [task for task in spec.tasks if task.name in teacher_val]
    values = {"teacher": task_metrics(teacher_val, data.y_val, covered, scales=scales)}
    for name in ("student", "baseline"):
        if name in models:
            values[name] = task_metrics(predict(models[name], data.x_val), data.y_val, spec.tasks,
                                        scales=scales)
    return {task.name: {name: found.get(task.name) for name, found in values.items()}
            for task in spec.tasks}


def write_metrics_csv(history: list[dict[str, Any]], path: Path) -> Path:
    columns: dict[str, None] = {}  # insertion-ordered union of the rows' keys
    for row in history:
        columns.update(dict.fromkeys(row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(history)
    return path
