"""Strategies: the job as a list of stages, and each stage's loss as named terms.

A stage's loss is `sum(coefficients[name] * terms[name])`; the terms are logged one by one.
Term names: "<task>.hard" (labelled rows only), "<task>.soft" (KD at T against the ensemble of
the task's teachers) and "feature.<teacher>" (normalised feature distillation through an adaptor).
Presets (spec.distillation.strategy) choose the terms; `distillation.terms` combines them.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from app.training.losses import HARD_LOSSES, SOFT_LOSSES
from app.training.spec import ArchSpec, JobSpec, TaskSpec
from app.training.weighting import LEARNED_METHODS, task_weights

Tensors = dict[str, torch.Tensor]
Role = Literal["teacher", "student_trunk", "student", "baseline"]


@dataclass(frozen=True)
class StagePlan:
    """One optimisation run: a teacher, the cascaded trunk stage, the student, or the baseline.

    The flags are decided once here, from the role and the spec; the loop reads them.
    """

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
    # Steps per epoch when an epoch is not one pass over the stage's rows: the baseline takes the
    # student's, cycling over its labelled rows, so both have the same steps and the same epochs.
    epoch_steps: int | None = None
    reads_teachers: bool = False  # soft or feature terms against teacher targets
    soft_tasks: tuple[str, ...] = ()  # tasks with a soft (KD) term
    features: bool = False  # feature-distillation terms (with adaptors)
    trains_heads: bool = True  # False: cascaded stage 1 leaves the task heads untouched
    masked: bool = False  # some rows lack labels: hard terms read the labelled rows only
    learned_weighting: bool = False  # uncertainty / DWA / GradNorm (student and baseline)
    noisy: bool = False  # training.input_noise is added to the inputs
    compiled: bool = False  # training.compile


@dataclass
class Batch:
    """What a loss term may read for one batch of rows."""

    logits: Tensors  # task -> (batch, out) student logits
    features: torch.Tensor | None  # (batch, width) student trunk features
    targets: Tensors  # task -> (batch,) or (batch, labels)
    labelled: torch.Tensor | None  # (batch,) bool; None: every row has labels
    teacher_logits: Tensors  # task -> (batch, out), the ensemble of the task's teachers
    teacher_features: Tensors  # teacher name -> (batch, teacher width)


def plan_stages(spec: JobSpec, *, rows: dict[str, int]) -> list[StagePlan]:
    """Return the stages in run order: trained teachers, the student stage(s), the baseline.

    `rows`: "train" (training rows), "labelled" (those with labels), "transfer" (extra rows).
    In-job teachers on the job's dataset and the baseline train on the labelled rows; the
    baseline runs exactly as many optimiser steps as the student stages together, in as many
    epochs (each of the student's steps per epoch, reshuffling its rows as often as needed), so its
    curve and its evaluations line up with the student's.
    """
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
    training, terms = spec.training, spec.distillation.terms or []
    learned = spec.weighting.method in LEARNED_METHODS
    student_rows = rows["train"] + rows["transfer"]
    masked = rows["labelled"] < student_rows
    common = dict(arch=spec.student, tasks=tuple(spec.tasks), lr=training.lr,
                  batch_size=training.batch_size, weight_decay=training.weight_decay,
                  seed=training.seed, compiled=training.compile)
    if spec.distillation.strategy == "cascaded":
        stages.append(StagePlan(name="student:trunk", role="student_trunk",
                                epochs=spec.distillation.trunk_epochs or 1, reads_teachers=True,
                                features=True, trains_heads=False, masked=masked, **common))
    soft = tuple(task.name for task in _soft_tasks(spec)) if "soft" in terms else ()
    stages.append(StagePlan(name="student", role="student", epochs=training.epochs,
                            reads_teachers=True, soft_tasks=soft, features="feature" in terms,
                            masked=masked, learned_weighting=learned,
                            noisy=training.input_noise > 0, **common))
    if spec.baseline:
        epochs = sum(plan.epochs for plan in stages if plan.role != "teacher")
        stages.append(StagePlan(name="baseline", role="baseline", epochs=epochs,
                                epoch_steps=steps_per_epoch(student_rows, training.batch_size),
                                learned_weighting=learned, noisy=training.input_noise > 0,
                                **common))
    return stages


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Return the optimiser steps of one pass over `rows` rows."""
    return max(1, math.ceil(rows / batch_size))


def _soft_tasks(spec: JobSpec) -> list[TaskSpec]:
    """Return the tasks that get a soft (KD) term: distilled and covered by a teacher."""
    covered = {name for teacher in spec.teachers for name in teacher.tasks}
    return [task for task in spec.tasks if task.distill and task.name in covered]


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

    Rebuilding them every step (the teachers' tasks, kd_settings, the term names) was about 10 %
    of a digits-mt student step.
    """

    hard: tuple[tuple[str, TaskSpec], ...]  # (term name, task)
    soft: tuple[tuple[str, str, Callable[..., torch.Tensor], float], ...]  # (term, task, loss, T)
    features: bool
    masked: bool  # hard terms read the labelled rows only

    def compute(self, batch: Batch, adaptors: nn.ModuleDict) -> Tensors:
        """Return the named loss terms of one batch.

        A batch without a labelled row has no hard terms at all (not zeros): a learned weighting
        then leaves those tasks out of the step instead of reading a loss of 0.
        """
        terms: Tensors = {}
        labelled = batch.labelled if self.masked else None
        if labelled is None or bool(labelled.any()):  # one check for all tasks
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
    hard = tuple((f"{task.name}.hard", task) for task in plan.tasks) if plan.trains_heads else ()
    soft = tuple((f"{name}.soft", name, SOFT_LOSSES[spec.task(name).kind],
                  spec.kd_settings(name)[0]) for name in plan.soft_tasks)
    return StageTerms(hard=hard, soft=soft, features=plan.features, masked=plan.masked)


def stage_coefficients(spec: JobSpec, plan: StagePlan,
                       feature_teachers: Sequence[str]) -> dict[str, float]:
    """Return each term's weight: task weight x (alpha | 1 - alpha), feature_weight for features."""
    names = [task.name for task in plan.tasks]
    coefficients: dict[str, float] = {}
    if plan.role == "teacher":  # teachers learn their tasks equally weighted
        return {f"{name}.hard": 1.0 for name in names}
    weights = task_weights(spec, names)
    if plan.trains_heads:
        for name in names:
            _, alpha = spec.kd_settings(name)
            distilled = name in plan.soft_tasks
            coefficients[f"{name}.hard"] = weights[name] * ((1 - alpha) if distilled else 1.0)
            if distilled:
                coefficients[f"{name}.soft"] = weights[name] * alpha
    if plan.features:
        for teacher in feature_teachers:
            coefficients[f"feature.{teacher}"] = spec.distillation.feature_weight
    if plan.role == "student":  # transformer layer terms (losses_transformer.py), if any
        for term, weight in (("hidden", spec.distillation.hidden_weight),
                             ("attention", spec.distillation.attention_weight)):
            if weight is not None:
                coefficients[term] = weight
    return coefficients
