"""Regression targets: standardise with the train split's mean and std, map predictions back.

Regression heads train on (y - mean) / std so that their MSE is on the scale of the classification
losses; teacher predictions live in the same standardised units. Metrics map predictions back with
`to_original_units` and compare them with the untouched targets, so they read in original units.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.training.datasets.rowstore import DiskRows
from app.training.spec import TaskSpec

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TargetScale:
    """Mean and standard deviation of one regression target on the train split."""

    mean: float
    std: float


def fit_target_scales(y_train: Tensors, tasks: Sequence[TaskSpec]) -> dict[str, TargetScale]:
    """Return the train-split scale of every regression task (a constant target gets std 1)."""
    scales = {}
    for task in tasks:
        if task.kind == "regression":
            column = y_train[task.name]
            if isinstance(column, DiskRows):  # rows on disk: one chunked pass
                mean, std = column.mean_std()
            else:
                y = column.double()  # (n_train,)
                mean, std = y.mean().item(), y.std(correction=0).item()
            scales[task.name] = TargetScale(mean=mean, std=std if std > 0 else 1.0)
    return scales


def standardise_targets(targets: Tensors, scales: dict[str, TargetScale]) -> Tensors:
    """Return the targets with each scaled task as (y - mean) / std; other tasks unchanged."""
    return {task: (y - scales[task].mean) / scales[task].std if task in scales else y
            for task, y in targets.items()}


def to_original_units(outputs: Tensors, scales: dict[str, TargetScale]) -> Tensors:
    """Return the outputs with each scaled task's prediction mapped back to original units."""
    return {task: z * scales[task].std + scales[task].mean if task in scales else z
            for task, z in outputs.items()}
