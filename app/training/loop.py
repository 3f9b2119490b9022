"""The training loop: `train(spec, workdir, callbacks=...) -> Result`, the engine's one entry point.

Stages run in order (each teacher, the distilled student, the hard-label baseline); every epoch
ends with an atomic checkpoint, so calling `train` again on the same workdir with the same spec
resumes where it stopped and ends with the same weights and metrics as an uninterrupted run.
"""

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.checkpoint import (atomic_path, capture_rng, load_checkpoint, new_checkpoint,
                                     restore_rng, save_checkpoint)
from app.training.datasets.registry import DatasetSplits, load_dataset
from app.training.errors import TrainingCancelled, TrainingError
from app.training.evaluate import (PRIMARY_METRICS, compare_tasks, cpu_latency_us, ensemble_logits,
                                   predict, task_metrics)
from app.training.export import write_onnx, write_safetensors, write_student_config
from app.training.models import build_model, count_params
from app.training.spec import JobSpec, spec_sha256
from app.training.strategies import StagePlan, plan_stages, stage_loss

__all__ = ["Result", "TrainCallbacks", "TrainingCancelled", "TrainingError", "train"]

Tensors = dict[str, torch.Tensor]


class TrainCallbacks:
    """Hooks the caller overrides (the worker writes events and heartbeats); all no-ops here."""

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        """Called when a stage starts or resumes."""

    def on_epoch_end(self, *, stage: str, epoch: int, epochs: int, progress: float,
                     metrics: dict[str, float], losses: dict[str, float], seconds: float) -> None:
        """Called after each epoch is checkpointed; progress is the job's fraction done (0..1)."""

    def should_stop(self) -> bool:
        """Return True to cancel; checked between optimisation steps."""
        return False


@dataclass
class Result:
    """What a finished job produced: results.json's content and the artifact files."""

    results: dict[str, Any]
    artifacts: list[Path]


@dataclass
class _Run:
    """What every stage of one train() call shares."""

    spec: JobSpec
    workdir: Path
    device: torch.device
    data: DatasetSplits
    callbacks: TrainCallbacks
    state: dict[str, Any]  # the checkpoint dict (see checkpoint.py)
    total_epochs: int
    started: float
    elapsed_before: float

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def epochs_done(self) -> int:
        current = self.state["current"]
        done = sum(stage["epochs"] for stage in self.state["finished"].values())
        return done + (current["epoch"] if current else 0)

    def save(self) -> None:
        self.state["elapsed"] = self.elapsed()
        save_checkpoint(self.state, self.workdir)


def train(spec: JobSpec, workdir: Path, *, callbacks: TrainCallbacks | None = None,
          job_id: str | None = None) -> Result:
    """Run (or resume) the job in `workdir` and write its artifacts to workdir/artifacts."""
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sha = spec_sha256(spec)
    device = resolve_device(spec.training.device)
    data = load_dataset(spec.dataset, tasks=spec.tasks).to(device)
    state = load_checkpoint(workdir, spec_sha256=sha) or new_checkpoint(spec_sha256=sha)
    plans = plan_stages(spec)
    run = _Run(spec=spec, workdir=workdir, device=device, data=data,
               callbacks=callbacks or TrainCallbacks(), state=state,
               total_epochs=sum(plan.epochs for plan in plans), started=started,
               elapsed_before=state["elapsed"])

    models: dict[str, nn.Module] = {}
    teacher_train: list[Tensors] = []  # per teacher: task -> (n_train, out), computed once
    teacher_test: list[Tensors] = []  # per teacher: task -> (n_test, out)
    for plan in plans:
        targets = ensemble_logits(teacher_train) if plan.role == "student" else {}
        models[plan.name] = model = _trained_model(run, plan, teacher_logits=targets)
        if plan.role == "teacher":
            teacher_train.append(predict(model, data.x_train))
            teacher_test.append(predict(model, data.x_test))
    return _finish(run, plans, models, teacher_test=teacher_test, job_id=job_id, sha=sha)


def resolve_device(name: str) -> torch.device:
    """Return the torch device for the spec's "auto" | "cpu" | "cuda"."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(code="device_unavailable", message="the spec asks for a CUDA device "
                            "but this worker has none; use device 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _trained_model(run: _Run, plan: StagePlan, *, teacher_logits: Tensors) -> nn.Module:
    torch.manual_seed(plan.seed)
    model = build_model(plan.arch, input_shape=run.data.input_shape, tasks=plan.tasks).to(run.device)
    finished = run.state["finished"].get(plan.name)
    if finished is not None:
        model.load_state_dict(finished["model"])
    else:
        _train_stage(run, plan, model, teacher_logits=teacher_logits)
    return model.eval()


def _train_stage(run: _Run, plan: StagePlan, model: nn.Module, *, teacher_logits: Tensors) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    batches = torch.Generator().manual_seed(plan.seed)  # batch order, on the CPU
    first_epoch, seconds = 1, 0.0
    current = run.state["current"]
    if current is not None and current["stage"] == plan.name:
        model.load_state_dict(current["model"])
        optimizer.load_state_dict(current["optimizer"])
        restore_rng(current["rng"], batches, run.device)
        first_epoch, seconds = current["epoch"] + 1, current["seconds"]

    run.callbacks.on_stage_start(stage=plan.name, epochs=plan.epochs)
    for epoch in range(first_epoch, plan.epochs + 1):
        epoch_started = time.perf_counter()
        losses = _train_epoch(run, plan, model, optimizer, batches, teacher_logits=teacher_logits)
        metrics = task_metrics(predict(model, run.data.x_test), run.data.y_test, plan.tasks)
        epoch_seconds = time.perf_counter() - epoch_started
        seconds += epoch_seconds
        run.state["history"].append(_history_row(plan, epoch, epoch_seconds, metrics, losses))
        weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
        if epoch == plan.epochs:
            run.state["finished"][plan.name] = {"model": weights, "epochs": plan.epochs,
                                                "seconds": seconds}
            run.state["current"] = None
        else:
            run.state["current"] = {"stage": plan.name, "epoch": epoch, "seconds": seconds,
                                    "model": weights, "optimizer": optimizer.state_dict(),
                                    "rng": capture_rng(batches, run.device)}
        run.save()
        run.callbacks.on_epoch_end(stage=plan.name, epoch=epoch, epochs=plan.epochs,
                                   progress=run.epochs_done() / run.total_epochs, metrics=metrics,
                                   losses=losses, seconds=epoch_seconds)


def _train_epoch(run: _Run, plan: StagePlan, model: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: torch.Generator, *, teacher_logits: Tensors) -> dict[str, float]:
    """Run one pass over the training split; return the sample-weighted mean of each loss term."""
    data = run.data
    terms_fn, coefficients = stage_loss(run.spec, plan)
    n_rows = len(data.x_train)
    sums: dict[str, torch.Tensor] = {}
    model.train()
    order = torch.randperm(n_rows, generator=batches).to(run.device)  # (n_train,)
    for start in range(0, n_rows, plan.batch_size):
        if run.callbacks.should_stop():
            raise TrainingCancelled(f"cancelled during stage '{plan.name}'")
        rows = order[start:start + plan.batch_size]  # (batch,)
        logits = model(data.x_train[rows])  # task -> (batch, out)
        terms = terms_fn(logits=logits, targets={task: y[rows] for task, y in data.y_train.items()},
                         teacher_logits={task: z[rows] for task, z in teacher_logits.items()})
        loss = sum(coefficient * terms[name] for name, coefficient in coefficients.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for name, value in {**terms, "total": loss}.items():
            sums[name] = sums.get(name, 0.0) + value.detach() * len(rows)
    losses = {name: (total / n_rows).item() for name, total in sums.items()}
    broken = [name for name, value in losses.items() if not math.isfinite(value)]
    if broken:
        raise TrainingError(code="diverged", message=(
            f"stage '{plan.name}' diverged: loss {', '.join(broken)} became NaN or infinite; "
            f"try a lower learning rate (was {plan.lr:g})"))
    return losses


def _history_row(plan: StagePlan, epoch: int, seconds: float, metrics: dict[str, float],
                 losses: dict[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": plan.name, "epoch": epoch, "seconds": round(seconds, 4)}
    for task in plan.tasks:
        row[f"{task.name}.{PRIMARY_METRICS[task.kind][0]}"] = metrics[task.name]
    row.update({f"loss.{name}": value for name, value in losses.items()})
    return row


def _finish(run: _Run, plans: list[StagePlan], models: dict[str, nn.Module], *,
            teacher_test: list[Tensors], job_id: str | None, sha: str) -> Result:
    spec, data = run.spec, run.data
    out = run.workdir / "artifacts"
    out.mkdir(exist_ok=True)
    student = models["student"]
    teachers = [models[plan.name] for plan in plans if plan.role == "teacher"]

    artifacts = [write_student_config(arch=spec.student, tasks=spec.tasks,
                                      input_shape=data.input_shape, directory=out)]
    if "safetensors" in spec.export:
        artifacts.append(write_safetensors(student, directory=out))
    if "onnx" in spec.export:
        artifacts.append(write_onnx(student, task_names=[task.name for task in spec.tasks],
                                    input_shape=data.input_shape, directory=out))
    artifacts.append(_write_metrics_csv(run.state["history"], out / "metrics.csv"))

    def metrics_of(model: nn.Module) -> dict[str, float]:
        return task_metrics(predict(model, data.x_test), data.y_test, spec.tasks)

    finished = run.state["finished"]
    results = {
        "job_id": job_id,
        "spec_sha256": sha,
        "tasks": compare_tasks(
            spec.tasks, student=metrics_of(student),
            teacher=task_metrics(ensemble_logits(teacher_test), data.y_test, spec.tasks),
            baseline=metrics_of(models["baseline"]) if "baseline" in models else None),
        "params": {
            "teacher": sum(count_params(teacher) for teacher in teachers),
            "student": count_params(student),
            "teachers": {teacher.name: count_params(models[f"teacher:{teacher.name}"])
                         for teacher in spec.teachers},
        },
        "stages": [{"name": plan.name, "epochs": plan.epochs,
                    "seconds": round(finished[plan.name]["seconds"], 3)} for plan in plans],
        "timing": {"total_seconds": 0.0},
        "latency_us_per_sample": {  # CPU, whole test split per call; teacher = all teachers
            "teacher": round(cpu_latency_us(teachers, data.x_test), 3),
            "student": round(cpu_latency_us([student], data.x_test), 3),
        },
        "device": run.device.type,
    }
    results["timing"]["total_seconds"] = round(run.elapsed(), 3)
    results_path = out / "results.json"
    with atomic_path(results_path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    return Result(results=results, artifacts=[results_path, *artifacts])


def _write_metrics_csv(history: list[dict[str, Any]], path: Path) -> Path:
    columns: dict[str, None] = {}  # insertion-ordered union of the rows' keys
    for row in history:
        columns.update(dict.fromkeys(row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(history)
    return path
