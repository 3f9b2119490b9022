"""Strategies: the job as a list of stages, and each stage's loss as named terms.

A stage's loss is `sum(coefficients[name] * terms[name])`; the terms are logged one by one.
Term names are "<task>.hard" and "<task>.soft".
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from app.training.losses import HARD_LOSSES, SOFT_LOSSES
from app.training.spec import ArchSpec, JobSpec, TaskSpec
from app.training.weighting import task_weights

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StagePlan:
    """One optimisation run: a teacher, the distilled student, or the hard-label baseline."""

    name: str  # "teacher:<name>", "student" or "baseline"
    role: Literal["teacher", "student", "baseline"]
    arch: ArchSpec
    tasks: tuple[TaskSpec, ...]
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    seed: int  # seeds the model init and the batch order


def plan_stages(spec: JobSpec) -> list[StagePlan]:
    """Return the stages in run order: each teacher, the student, then the baseline if asked."""
    stages = []
    for index, teacher in enumerate(spec.teachers):
        source = teacher.source.train
        stages.append(StagePlan(
            name=f"teacher:{teacher.name}", role="teacher", arch=source.arch,
            tasks=tuple(spec.task(name) for name in teacher.tasks), epochs=source.epochs,
            lr=source.lr, batch_size=source.batch_size, weight_decay=source.weight_decay,
            seed=spec.training.seed + 1 + index))
    roles: list[Literal["student", "baseline"]] = ["student", "baseline"] if spec.baseline else ["student"]
    for role in roles:
        # The baseline shares the student's seed: same init, same batch order, hard labels only.
        stages.append(StagePlan(
            name=role, role=role, arch=spec.student, tasks=tuple(spec.tasks),
            epochs=spec.training.epochs, lr=spec.training.lr, batch_size=spec.training.batch_size,
            weight_decay=spec.training.weight_decay, seed=spec.training.seed))
    return stages


def hard_terms(tasks: Sequence[TaskSpec], *, logits: Tensors, targets: Tensors) -> Tensors:
    """Return "<task>.hard": the supervised loss of each task."""
    return {f"{t.name}.hard": HARD_LOSSES[t.kind](logits[t.name], targets[t.name]) for t in tasks}


def task_kd_terms(spec: JobSpec, tasks: Sequence[TaskSpec], *, logits: Tensors, targets: Tensors,
                  teacher_logits: Tensors) -> Tensors:
    """Return "<task>.hard" and "<task>.soft" (KD against the teachers' logits at T)."""
    terms = hard_terms(tasks, logits=logits, targets=targets)
    for task in tasks:
        temperature, _ = spec.kd_settings(task.name)
        terms[f"{task.name}.soft"] = SOFT_LOSSES[task.kind](
            logits[task.name], teacher_logits[task.name], temperature=temperature)
    return terms


def task_kd_coefficients(spec: JobSpec, tasks: Sequence[TaskSpec]) -> dict[str, float]:
    """Return weight * alpha for soft terms and weight * (1 - alpha) for hard terms."""
    weights = task_weights(spec, [task.name for task in tasks])
    coefficients = {}
    for task in tasks:
        _, alpha = spec.kd_settings(task.name)
        coefficients[f"{task.name}.soft"] = weights[task.name] * alpha
        coefficients[f"{task.name}.hard"] = weights[task.name] * (1 - alpha)
    return coefficients


@dataclass(frozen=True)
class Strategy:
    """How the student stage turns outputs into loss terms and weights them."""

    terms: Callable[..., Tensors]
    coefficients: Callable[[JobSpec, Sequence[TaskSpec]], dict[str, float]]


STRATEGIES: dict[str, Strategy] = {
    "task_kd": Strategy(terms=task_kd_terms, coefficients=task_kd_coefficients),
}


def stage_loss(spec: JobSpec, plan: StagePlan) -> tuple[Callable[..., Tensors], dict[str, float]]:
    """Return (terms_fn(logits=, targets=, teacher_logits=) -> terms, coefficients) for a stage."""
    if plan.role == "student":
        strategy = STRATEGIES[spec.distillation.strategy]

        def student_terms(*, logits: Tensors, targets: Tensors, teacher_logits: Tensors) -> Tensors:
            return strategy.terms(spec, plan.tasks, logits=logits, targets=targets,
                                  teacher_logits=teacher_logits)

        return student_terms, strategy.coefficients(spec, plan.tasks)

    # Teachers learn their tasks equally weighted; the baseline uses the student's task weights.
    names = [task.name for task in plan.tasks]
    weights = task_weights(spec, names) if plan.role == "baseline" else dict.fromkeys(names, 1.0)

    def supervised_terms(*, logits: Tensors, targets: Tensors, teacher_logits: Tensors) -> Tensors:
        return hard_terms(plan.tasks, logits=logits, targets=targets)

    return supervised_terms, {f"{name}.hard": weights[name] for name in names}
