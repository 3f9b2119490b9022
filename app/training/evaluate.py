"""Per-task metrics on the test split and the teacher / student / baseline comparison."""

import copy
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from app.training.spec import TaskSpec

Tensors = dict[str, torch.Tensor]


def multiclass_accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class is the target; logits (n, classes), target (n,)."""
    return (logits.argmax(dim=-1) == target).sum().item() / len(target)


def binary_accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows where (logit > 0) equals the 0/1 target; logits (n, 1), target (n,)."""
    return ((logits[:, 0] > 0).float() == target).sum().item() / len(target)


# kind -> (metric name, higher is better, metric function)
PRIMARY_METRICS: dict[str, tuple[str, bool, Callable[[torch.Tensor, torch.Tensor], float]]] = {
    "multiclass": ("accuracy", True, multiclass_accuracy),
    "binary": ("accuracy", True, binary_accuracy),
}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 4096) -> Tensors:
    """Return eval-mode logits per task for all rows of x, computed in batches."""
    was_training = model.training
    model.eval()
    chunks = [model(x[start:start + batch_size]) for start in range(0, len(x), batch_size)]
    model.train(was_training)
    return {task: torch.cat([chunk[task] for chunk in chunks]) for task in chunks[0]}


def task_metrics(logits: Tensors, targets: Tensors, tasks: Sequence[TaskSpec]) -> dict[str, float]:
    """Return the primary metric of each task."""
    return {t.name: PRIMARY_METRICS[t.kind][2](logits[t.name], targets[t.name]) for t in tasks}


def ensemble_logits(per_model: Sequence[Tensors]) -> Tensors:
    """Average the logits of the models that predict each task (teachers sharing a task)."""
    tasks = {task for logits in per_model for task in logits}
    return {task: torch.stack([logits[task] for logits in per_model if task in logits]).mean(dim=0)
            for task in sorted(tasks)}


@torch.no_grad()
def cpu_latency_us(models: Sequence[nn.Module], x: torch.Tensor, *, repeats: int = 5) -> float:
    """Return the best-of-`repeats` CPU time per row, in microseconds, to run all `models` on x."""
    cpu_models = [copy.deepcopy(model).cpu().eval() for model in models]
    x = x.cpu()
    for model in cpu_models:  # warm-up
        model(x)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for model in cpu_models:
            model(x)
        best = min(best, time.perf_counter() - start)
    return best / len(x) * 1e6


def compare_tasks(tasks: Sequence[TaskSpec], *, teacher: dict[str, float], student: dict[str, float],
                  baseline: dict[str, float] | None) -> dict[str, dict]:
    """Return results.json's "tasks": metric, direction and the three models' values per task."""
    return {
        task.name: {
            "metric": PRIMARY_METRICS[task.kind][0],
            "higher_is_better": PRIMARY_METRICS[task.kind][1],
            "teacher": teacher[task.name],
            "student": student[task.name],
            "baseline": None if baseline is None else baseline[task.name],
        }
        for task in tasks
    }
