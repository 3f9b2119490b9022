"""Task weighting: a registry from the spec's method to per-task loss weights."""

from collections.abc import Callable, Sequence

from app.training.spec import JobSpec


def equal_weights(spec: JobSpec, tasks: Sequence[str]) -> dict[str, float]:
    """Weight every task loss by 1."""
    return {task: 1.0 for task in tasks}


def fixed_weights(spec: JobSpec, tasks: Sequence[str]) -> dict[str, float]:
    """Weight each task loss by the user's value (1 for tasks not listed)."""
    weights = spec.weighting.weights or {}
    return {task: weights.get(task, 1.0) for task in tasks}


WEIGHTING_METHODS: dict[str, Callable[[JobSpec, Sequence[str]], dict[str, float]]] = {
    "equal": equal_weights,
    "fixed": fixed_weights,
}


def task_weights(spec: JobSpec, tasks: Sequence[str]) -> dict[str, float]:
    """Return the static loss weight of each task under the spec's weighting method."""
    return WEIGHTING_METHODS[spec.weighting.method](spec, tasks)
