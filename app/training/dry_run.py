"""A job's dry run: resolve its data and teachers, push one batch through every model on CPU, and
summarise what training would do (no training, nothing written)."""

import math
from typing import Any

import torch

from app.training.datasets.registry import load_dataset
from app.training.errors import TrainingError
from app.training.models import build_model, count_params, output_size
from app.training.spec import JobSpec
from app.training.strategies import plan_stages
from app.training.teacher_targets import build_teacher
from app.training.teachers import FileResolver, LocalFileResolver, PrecomputedTeacher

BATCH_ROWS = 8
FLOAT_BYTES = 4


def dry_run(spec: JobSpec, *, resolver: FileResolver | None = None) -> dict[str, Any]:
    """Return params per model, compression ratio, stages, steps per epoch and the teacher-cache size.

    Raises TrainingError (code and a message a user can act on) when data or a teacher is unusable.
    """
    resolver = resolver or LocalFileResolver()
    data = load_dataset(spec.dataset, tasks=list(spec.tasks), resolver=resolver)
    batch = data.x_train[:BATCH_ROWS]  # (batch, *input_shape)
    rows = {"train": len(data.x_train), "test": len(data.x_test)}
    teacher_params: dict[str, int | None] = {}
    with torch.no_grad():
        for teacher in spec.teachers:
            tasks = [spec.task(name) for name in teacher.tasks]
            if teacher.source.train is not None:
                model = build_model(teacher.source.train.arch, input_shape=data.input_shape, tasks=tasks).eval()
                _check_outputs(model(batch), tasks, where=f"teachers[{teacher.name}]")
                teacher_params[teacher.name] = count_params(model)
                continue
            built = build_teacher(spec, teacher, trained=None, input_shape=data.input_shape, rows=rows,
                                  resolver=resolver)
            if not isinstance(built, PrecomputedTeacher):  # precomputed outputs are checked when loaded
                _check_outputs(built.outputs(batch).logits, tasks, where=f"teachers[{teacher.name}]")
            teacher_params[teacher.name] = getattr(built, "params", None)
        student = build_model(spec.student, input_shape=data.input_shape, tasks=list(spec.tasks)).eval()
        _check_outputs(student(batch), spec.tasks, where="student")
    student_params = count_params(student)
    known = [p for p in teacher_params.values() if p is not None]
    transfer_rows = (spec.transfer_set.generate or 0) if spec.transfer_set is not None else 0
    stages = []
    for plan in plan_stages(spec):
        seen = rows["train"] + (transfer_rows if plan.name.startswith("student") else 0)  # transfer rows: student only
        stages.append({"name": plan.name, "epochs": plan.epochs, "batch_size": plan.batch_size,
                       "steps_per_epoch": math.ceil(seen / plan.batch_size)})
    cached_rows = rows["train"] + rows["test"] + transfer_rows
    out_width = sum(output_size(task) for task in spec.tasks)
    return {
        "dataset": {"input_shape": list(data.input_shape), "train_rows": rows["train"], "test_rows": rows["test"],
                    "notes": list(data.notes)},
        "params": {"student": student_params, "teachers": teacher_params, "teacher": sum(known) if known else None},
        "compression_ratio": round(sum(known) / student_params, 2) if known else None,
        "stages": stages,
        "teacher_cache_bytes_estimate": cached_rows * out_width * FLOAT_BYTES * len(spec.teachers),
    }


def _check_outputs(logits: dict[str, torch.Tensor], tasks: Any, *, where: str) -> None:
    for task in tasks:
        got = logits.get(task.name)
        if got is None:
            raise TrainingError(code="teacher_mismatch", message=f"{where}: gives no output for task '{task.name}'")
        if got.shape[-1] != output_size(task):
            raise TrainingError(code="teacher_mismatch", message=(
                f"{where}: output for '{task.name}' has width {got.shape[-1]}, the task needs {output_size(task)}"))
