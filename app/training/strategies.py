"""Strategies: the job as a list of stages, and each stage's loss as named terms.

A stage's loss is `sum(coefficients[name] * terms[name])`; the terms are logged one by one.
Term names: "<task>.hard" (labelled rows only), "<task>.soft" (KD at T against the teachers'
averaged logits) and "feature.<teacher>" (normalised feature distillation through an adaptor).
Presets (spec.distillation.strategy) choose the terms; `distillation.terms` combines them.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from app.training.losses import HARD_LOSSES, SOFT_LOSSES
from app.training.spec import ArchSpec, JobSpec, TaskSpec
from app.training.weighting import task_weights

Tensors = dict[str, torch.Tensor]
Role = Literal["teacher", "student_trunk", "student", "baseline"]


@dataclass(frozen=True)
class StagePlan:
    """One optimisation run: a teacher, the cascaded trunk stage, the student, or the baseline."""

    name: str  # "teacher:<name>", "student:trunk", "student" or "baseline"
    role: Role
    arch: ArchSpec
    tasks: tuple[TaskSpec, ...]
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    seed: int  # seeds the model init and the batch order
    dataset: str | None = None  # a teacher's source-domain dataset (None: the job's)


@dataclass
class Batch:
    """What a loss term may read for one batch of rows."""

    logits: Tensors  # task -> (batch, out) student logits
    features: torch.Tensor | None  # (batch, width) student trunk features
    targets: Tensors  # task -> (batch,) or (batch, labels)
    labelled: torch.Tensor | None  # (batch,) bool; None: every row has labels
    teacher_logits: Tensors  # task -> (batch, out), averaged over the teachers of the task
    teacher_features: Tensors  # teacher name -> (batch, teacher width)


def plan_stages(spec: JobSpec) -> list[StagePlan]:
    """Return the stages in run order: trained teachers, the student stage(s), the baseline."""
    stages = []
    for index, teacher in enumerate(spec.teachers):
        source = teacher.source.train
        if source is None:  # weights, ONNX and precomputed outputs need no training
            continue
        stages.append(StagePlan(
            name=f"teacher:{teacher.name}", role="teacher", arch=source.arch,
            tasks=tuple(spec.task(name) for name in teacher.tasks), epochs=source.epochs,
            lr=source.lr, batch_size=source.batch_size, weight_decay=source.weight_decay,
            seed=spec.training.seed + 1 + index, dataset=source.dataset))
    student: list[tuple[str, Role, int]] = []
    if spec.distillation.strategy == "cascaded":
        student.append(("student:trunk", "student_trunk", spec.distillation.trunk_epochs or 1))
    student.append(("student", "student", spec.training.epochs))
    if spec.baseline:
        student.append(("baseline", "baseline", spec.training.epochs))
    # The baseline shares the student's seed: same init, same batch order, hard labels only.
    for name, role, epochs in student:
        stages.append(StagePlan(
            name=name, role=role, arch=spec.student, tasks=tuple(spec.tasks), epochs=epochs,
            lr=spec.training.lr, batch_size=spec.training.batch_size,
            weight_decay=spec.training.weight_decay, seed=spec.training.seed))
    return stages


def uses_teachers(plan: StagePlan) -> bool:
    """Return whether the stage reads teacher outputs."""
    return plan.role in ("student", "student_trunk")


def uses_features(spec: JobSpec, plan: StagePlan) -> bool:
    """Return whether the stage has feature-distillation terms."""
    return plan.role == "student_trunk" or (
        plan.role == "student" and "feature" in (spec.distillation.terms or []))


def trains_trunk_only(plan: StagePlan) -> bool:
    """Return whether the stage leaves the task heads untouched (cascaded stage 1)."""
    return plan.role == "student_trunk"


def soft_tasks(spec: JobSpec, plan: StagePlan) -> list[TaskSpec]:
    """Return the tasks that get a soft (KD) term in this stage."""
    if plan.role != "student" or "soft" not in (spec.distillation.terms or []):
        return []
    covered = {name for teacher in spec.teachers for name in teacher.tasks}
    return [task for task in plan.tasks if task.distill and task.name in covered]


def masked_hard_loss(task: TaskSpec, logits: torch.Tensor, target: torch.Tensor,
                     labelled: torch.Tensor | None) -> torch.Tensor:
    """Return the task's supervised loss over the labelled rows (None: all rows). The caller
    handles a batch without any labelled row (StageTerms.compute checks once for all tasks)."""
    if labelled is not None:
        logits, target = logits[labelled], target[labelled]
    return HARD_LOSSES[task.kind](logits, target)


def normalised_feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance of L2-normalised features (Li & Bilen 2020), summed over width, batch mean."""
    student = F.normalize(student.float(), dim=1)  # (batch, width)
    teacher = F.normalize(teacher.float(), dim=1)  # (batch, width)
    return (student - teacher).pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class StageTerms:
    """A stage's loss terms, resolved once per stage: the per-step path only computes them.

    Rebuilding them every step (soft_tasks scans the teachers, kd_settings, the term names) was
    about 10 % of a digits-mt student step.
    """

    hard: tuple[tuple[str, TaskSpec], ...]  # (term name, task)
    soft: tuple[tuple[str, str, Callable[..., torch.Tensor], float], ...]  # (term, task, loss, T)
    features: bool
    masked: bool  # hard terms skip unlabelled rows (student stages; teachers see labels only)

    def compute(self, batch: Batch, adaptors: nn.ModuleDict) -> Tensors:
        """Return the named loss terms of one batch."""
        terms: Tensors = {}
        labelled = batch.labelled if self.masked else None
        if labelled is not None and not bool(labelled.any()):  # one check for all tasks
            for name, task in self.hard:
                terms[name] = batch.logits[task.name].sum() * 0.0  # keeps the graph; adds nothing
        else:
            for name, task in self.hard:
                terms[name] = masked_hard_loss(task, batch.logits[task.name],
                                               batch.targets[task.name], labelled)
        for name, task, loss, temperature in self.soft:
            terms[name] = loss(batch.logits[task], batch.teacher_logits[task],
                               temperature=temperature)
        if self.features and batch.features is not None:
            for teacher, target in batch.teacher_features.items():
                terms[f"feature.{teacher}"] = normalised_feature_loss(
                    adaptors[teacher](batch.features), target)
        return terms


def stage_term_plan(spec: JobSpec, plan: StagePlan) -> StageTerms:
    """Resolve the stage's terms: which tasks get hard and soft terms, at what temperature."""
    hard = () if plan.role == "student_trunk" else tuple(
        (f"{task.name}.hard", task) for task in plan.tasks)
    soft = tuple((f"{task.name}.soft", task.name, SOFT_LOSSES[task.kind],
                  spec.kd_settings(task.name)[0]) for task in soft_tasks(spec, plan))
    return StageTerms(hard=hard, soft=soft, features=uses_features(spec, plan),
                      masked=plan.role != "teacher")


def stage_coefficients(spec: JobSpec, plan: StagePlan,
                       feature_teachers: Sequence[str]) -> dict[str, float]:
    """Return each term's weight: task weight x (alpha | 1 - alpha), feature_weight for features."""
    names = [task.name for task in plan.tasks]
    coefficients: dict[str, float] = {}
    if plan.role == "teacher":  # teachers learn their tasks equally weighted
        return {f"{name}.hard": 1.0 for name in names}
    weights = task_weights(spec, names)
    if plan.role != "student_trunk":
        distilled = {task.name for task in soft_tasks(spec, plan)}
        for name in names:
            _, alpha = spec.kd_settings(name)
            coefficients[f"{name}.hard"] = weights[name] * ((1 - alpha) if name in distilled else 1.0)
            if name in distilled:
                coefficients[f"{name}.soft"] = weights[name] * alpha
    if uses_features(spec, plan):
        for teacher in feature_teachers:
            coefficients[f"feature.{teacher}"] = spec.distillation.feature_weight
    return coefficients
