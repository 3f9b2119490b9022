"""Diagnostics: plain sentences about results that should not be read at face value.

Each rule reads the test comparison (results.json "tasks") and the test targets:
    - a teacher no better than the baseline on a task: KD cannot help there;
    - a student far behind both: a regression rmse more than FAR_BEHIND times the better of
      teacher and baseline, or a classification accuracy (multilabel: label accuracy) below what
      always predicting the majority class scores.
Notes about the teachers' outputs (probabilities passed as logits) come from teacher_targets.
"""

from collections.abc import Sequence
from typing import Any

import torch

from app.training.spec import TaskSpec

FAR_BEHIND = 3.0


def majority_rate(task: TaskSpec, target: torch.Tensor) -> float:
    """Return the accuracy of always predicting the most frequent class (per label, multilabel)."""
    if task.kind == "multilabel":  # (n, labels) 0/1: the majority value of each label
        positive = target.float().mean(dim=0)
        return torch.maximum(positive, 1 - positive).mean().item()
    counts = torch.bincount(target.long().flatten())
    return (counts.max() / counts.sum()).item()


def diagnose(tasks: Sequence[TaskSpec], compared: dict[str, dict[str, Any]],
             y_test: dict[str, torch.Tensor]) -> list[str]:
    """Return the diagnostics of a finished job, one sentence each (see the module docstring)."""
    found = []
    for task in tasks:
        entry = compared[task.name]
        metric, higher = entry["metric"], entry["higher_is_better"]
        teacher, student, baseline = entry["teacher"], entry["student"], entry["baseline"]
        if teacher is not None and baseline is not None and (
                teacher < baseline if higher else teacher > baseline):
            found.append(f"KD cannot help task {task.name}: teacher {metric} {teacher:.4g} vs "
                         f"baseline {baseline:.4g}")
        others = [value for value in (teacher, baseline) if value is not None]
        if task.kind == "regression":
            if others and student > FAR_BEHIND * min(others):
                found.append(f"student far behind on task {task.name}: {metric} {student:.4g}, "
                             f"more than {FAR_BEHIND:g}x the better of teacher and baseline "
                             f"({min(others):.4g})")
            continue
        accuracy_name = "label_accuracy" if task.kind == "multilabel" else "accuracy"
        accuracy = entry["all"]["student"][accuracy_name]
        floor = majority_rate(task, y_test[task.name])
        if accuracy < floor:
            found.append(f"student below the majority class on task {task.name}: {accuracy_name} "
                         f"{accuracy:.4g} vs {floor:.4g} for always predicting the most frequent "
                         "class")
    return found
