"""Dataset loaders: a registry from built-in name to a function returning tensors in memory."""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.errors import TrainingError
from app.training.spec import DatasetSpec, TaskSpec


@dataclass(frozen=True)
class DatasetSplits:
    """Train and test tensors; targets are int64 class ids (multiclass) or float 0/1 (binary)."""

    x_train: torch.Tensor  # (n_train, *input_shape) float32
    x_test: torch.Tensor  # (n_test, *input_shape) float32
    y_train: dict[str, torch.Tensor]  # task -> (n_train,)
    y_test: dict[str, torch.Tensor]  # task -> (n_test,)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> "DatasetSplits":
        """Return a copy with every tensor on `device`."""
        return DatasetSplits(
            x_train=self.x_train.to(device), x_test=self.x_test.to(device),
            y_train={task: y.to(device) for task, y in self.y_train.items()},
            y_test={task: y.to(device) for task, y in self.y_test.items()},
        )


BUILTIN_LOADERS: dict[str, Callable[[], DatasetSplits]] = {}


def register_builtin(name: str) -> Callable[[Callable[[], DatasetSplits]], Callable[[], DatasetSplits]]:
    """Register a loader for a built-in dataset that the static catalog describes."""
    if name not in BUILTIN_DATASETS:
        raise KeyError(f"built-in dataset {name!r} is missing from the catalog")

    def decorate(loader: Callable[[], DatasetSplits]) -> Callable[[], DatasetSplits]:
        BUILTIN_LOADERS[name] = loader
        return loader

    return decorate


def load_dataset(spec: DatasetSpec, *, tasks: list[TaskSpec]) -> DatasetSplits:
    """Load a dataset and keep the targets of the spec's tasks only."""
    import app.training.datasets.digits  # noqa: F401  (registers its loader)

    splits = BUILTIN_LOADERS[spec.builtin]()
    _check_splits(splits, name=spec.builtin)
    names = [task.name for task in tasks]
    return DatasetSplits(
        x_train=splits.x_train, x_test=splits.x_test,
        y_train={name: splits.y_train[name] for name in names},
        y_test={name: splits.y_test[name] for name in names},
    )


def _check_splits(splits: DatasetSplits, *, name: str) -> None:
    meta = BUILTIN_DATASETS[name]
    if list(splits.input_shape) != meta["input_shape"]:
        raise TrainingError(code="invalid_data", message=f"dataset '{name}' has input shape "
                            f"{list(splits.input_shape)}, expected {meta['input_shape']}")
    for split, x, targets in (("train", splits.x_train, splits.y_train),
                              ("test", splits.x_test, splits.y_test)):
        if not torch.isfinite(x).all():
            raise TrainingError(code="invalid_data",
                                message=f"dataset '{name}': {split} inputs contain NaN or inf")
        for task, y in targets.items():
            if len(y) != len(x):
                raise TrainingError(code="invalid_data", message=f"dataset '{name}': {split} "
                                    f"targets of '{task}' do not align with the inputs")
