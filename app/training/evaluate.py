"""Per-task metrics (validation each epoch, test once) and the teacher / student / baseline comparison.

Metrics per task kind (the first one is the primary metric that results.json compares):
    multiclass  accuracy ↑, macro_f1 (mean F1 over the classes in the targets or predictions)
    binary      accuracy ↑ (logit > 0), f1 (of the positive class), auc (None with one class)
    multilabel  micro_f1 ↑ (true/false positives pooled over all labels), label_accuracy (mean
                per-element accuracy, i.e. 1 - Hamming loss), macro_auc (mean over the labels with
                both classes present; None when no label has both)
    regression  rmse ↓, mae, r2 (None for a constant target), in the target's original units
A metric that is undefined is None; F1 with no positive in targets or predictions is 0 (as sklearn).
"""

import copy
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from app.training.spec import TaskSpec
from app.training.target_scaling import TargetScale, to_original_units

Tensors = dict[str, torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], float | None]


def multiclass_accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class is the target; logits (n, classes), target (n,)."""
    return (logits.argmax(dim=-1) == target).sum().item() / len(target)


def multiclass_macro_f1(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes in the targets or predictions."""
    predicted = logits.argmax(dim=-1)  # (n,)
    scores = [_f1(predicted == label, target == label) for label in torch.cat([predicted, target]).unique()]
    return sum(scores) / len(scores)


def binary_accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows where (logit > 0) equals the 0/1 target; logits (n, 1), target (n,)."""
    return ((logits[:, 0] > 0).float() == target).sum().item() / len(target)


def binary_f1(logits: torch.Tensor, target: torch.Tensor) -> float:
    """F1 of the positive class; logits (n, 1), target (n,)."""
    return _f1(logits[:, 0] > 0, target > 0.5)


def binary_auc(logits: torch.Tensor, target: torch.Tensor) -> float | None:
    """Area under the ROC curve; None when the targets hold one class only."""
    return roc_auc(logits[:, 0], target > 0.5)


def multilabel_micro_f1(logits: torch.Tensor, target: torch.Tensor) -> float:
    """F1 with true/false positives pooled over all labels; logits and target (n, labels)."""
    return _f1(logits > 0, target > 0.5)


def multilabel_label_accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-element accuracy over rows x labels (1 - Hamming loss)."""
    return ((logits > 0) == (target > 0.5)).float().mean().item()


def multilabel_macro_auc(logits: torch.Tensor, target: torch.Tensor) -> float | None:
    """Mean ROC AUC over the labels whose targets hold both classes; None if none does."""
    per_label = [roc_auc(logits[:, label], target[:, label] > 0.5) for label in range(target.shape[1])]
    defined = [auc for auc in per_label if auc is not None]
    return sum(defined) / len(defined) if defined else None


def regression_rmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Root mean squared error; prediction (n, 1), target (n,)."""
    return (prediction[:, 0].double() - target.double()).square().mean().sqrt().item()


def regression_mae(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean absolute error; prediction (n, 1), target (n,)."""
    return (prediction[:, 0].double() - target.double()).abs().mean().item()


def regression_r2(prediction: torch.Tensor, target: torch.Tensor) -> float | None:
    """Coefficient of determination; None when the target is constant."""
    target = target.double()
    total = (target - target.mean()).square().sum().item()
    residual = (prediction[:, 0].double() - target).square().sum().item()
    return None if total == 0 else 1 - residual / total


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """ROC AUC as the Mann-Whitney statistic with tied scores sharing their mean rank."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, group, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    mean_rank = counts.cumsum(0) - (counts - 1) / 2  # 1-based mean rank of each distinct score
    rank_sum = mean_rank[group][positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _f1(predicted: torch.Tensor, actual: torch.Tensor) -> float:
    true_pos = (predicted & actual).sum().item()
    wrong = (predicted ^ actual).sum().item()  # false positives + false negatives
    return 0.0 if true_pos == 0 else 2 * true_pos / (2 * true_pos + wrong)


# kind -> {metric name: function}; the first metric is the primary one.
METRICS: dict[str, dict[str, Metric]] = {
    "multiclass": {"accuracy": multiclass_accuracy, "macro_f1": multiclass_macro_f1},
    "binary": {"accuracy": binary_accuracy, "f1": binary_f1, "auc": binary_auc},
    "multilabel": {"micro_f1": multilabel_micro_f1, "label_accuracy": multilabel_label_accuracy,
                   "macro_auc": multilabel_macro_auc},
    "regression": {"rmse": regression_rmse, "mae": regression_mae, "r2": regression_r2},
}
HIGHER_IS_BETTER = {"multiclass": True, "binary": True, "multilabel": True, "regression": False}
# kind -> (primary metric name, higher is better, metric function)
PRIMARY_METRICS: dict[str, tuple[str, bool, Metric]] = {
    kind: (primary, HIGHER_IS_BETTER[kind], METRICS[kind][primary])
    for kind, primary in ((kind, next(iter(metrics))) for kind, metrics in METRICS.items())
}


@torch.inference_mode()  # no autograd bookkeeping at all: runs every epoch
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 8192) -> Tensors:
    """Return eval-mode logits per task for all rows of x, computed in batches."""
    was_training = model.training
    model.eval()
    chunks = [model(x[start:start + batch_size]) for start in range(0, len(x), batch_size)]
    model.train(was_training)
    return {task: torch.cat([chunk[task] for chunk in chunks]) for task in chunks[0]}


def all_task_metrics(logits: Tensors, targets: Tensors, tasks: Sequence[TaskSpec], *,
                     scales: dict[str, TargetScale] | None = None) -> dict[str, dict[str, float | None]]:
    """Return every metric of each task; regression outputs are mapped back by `scales` first."""
    outputs = to_original_units(logits, scales or {})
    return {t.name: {name: metric(outputs[t.name], targets[t.name])
                     for name, metric in METRICS[t.kind].items()} for t in tasks}


def task_metrics(logits: Tensors, targets: Tensors, tasks: Sequence[TaskSpec], *,
                 scales: dict[str, TargetScale] | None = None) -> dict[str, float]:
    """Return the primary metric of each task (see all_task_metrics)."""
    outputs = to_original_units(logits, scales or {})
    return {t.name: PRIMARY_METRICS[t.kind][2](outputs[t.name], targets[t.name]) for t in tasks}


def selection_score(metrics: dict[str, float], tasks: Sequence[TaskSpec],
                    scales: dict[str, TargetScale]) -> float:
    """Return one number to maximise over the tasks' primary metrics: their mean, with a
    lower-is-better regression rmse negated and divided by the target's train std (so a task in
    grams does not outweigh one in [0, 1])."""
    values = []
    for task in tasks:
        _, higher_is_better, _ = PRIMARY_METRICS[task.kind]
        value = metrics[task.name]
        scale = scales[task.name].std if task.name in scales else 1.0
        values.append(value if higher_is_better else -value / scale)
    return sum(values) / len(values)


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


def compare_tasks(tasks: Sequence[TaskSpec], *, teacher: dict[str, dict[str, float | None]],
                  student: dict[str, dict[str, float | None]],
                  baseline: dict[str, dict[str, float | None]] | None) -> dict[str, dict]:
    """Return results.json's "tasks": primary metric, direction, the three models' values, and "all".

    Each argument maps task -> every metric (all_task_metrics); "all" repeats them per model.
    """
    compared = {}
    for task in tasks:
        metric, higher_is_better, _ = PRIMARY_METRICS[task.kind]
        models = {"teacher": teacher[task.name], "student": student[task.name],
                  "baseline": None if baseline is None else baseline[task.name]}
        compared[task.name] = {
            "metric": metric, "higher_is_better": higher_is_better,
            **{model: None if values is None else values[metric] for model, values in models.items()},
            "all": models,
        }
    return compared
