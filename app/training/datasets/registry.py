"""Dataset loaders: a registry from built-in name to a function returning tensors in memory."""

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.datasets.splits import DatasetSplits
from app.training.errors import TrainingError
from app.training.files import FileResolver, LocalFileResolver
from app.training.spec import DatasetSpec, TaskSpec
from app.training.spec_files import dataset_files

# Modules that register a loader (and maybe a transfer generator) when imported; each keeps its
# heavy imports (scikit-learn, pandas, mnist1d, ...) inside functions so importing stays cheap.
_LOADER_MODULES = ("digits", "mnist1d", "penguins", "multimnist", "mnist8x8", "yeast", "census",
                   "fashion", "clothing_rows")


def digit_targets(digit: torch.Tensor) -> dict[str, torch.Tensor]:
    """The targets of catalog.DIGIT_TASKS from digit labels (n,) int64."""
    return {"digit": digit, "parity": digit % 2, "large": (digit >= 5).float()}


class TransferGenerator(Protocol):
    def __call__(self, n: int, seed: int, *, cache_dir: Path | None = None) -> torch.Tensor: ...


# A loader takes `encoding` (a keyword) when its catalog entry lists `encodings`.
BUILTIN_LOADERS: dict[str, Callable[..., DatasetSplits]] = {}
TRANSFER_GENERATORS: dict[str, TransferGenerator] = {}


def register_builtin(name: str) -> Callable[[Callable[..., DatasetSplits]], Callable[..., DatasetSplits]]:
    """Register a loader for a built-in dataset that the static catalog describes."""
    if name not in BUILTIN_DATASETS:
        raise KeyError(f"built-in dataset {name!r} is missing from the catalog")

    def decorate(loader: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
        BUILTIN_LOADERS[name] = loader
        return loader

    return decorate


def unavailable(name: str) -> TrainingError:
    """Return the error of a built-in dataset whose data is not installed here, saying how to install it."""
    return TrainingError(code="dataset_unavailable", message=(
        f"built-in dataset '{name}' is not installed on this machine; "
        f"{BUILTIN_DATASETS[name]['requires']}"))


def register_transfer_generator(name: str) -> Callable[[TransferGenerator], TransferGenerator]:
    """Register the unlabelled transfer-set generator of a built-in dataset."""
    if not BUILTIN_DATASETS.get(name, {}).get("transfer_generator"):
        raise KeyError(f"the catalog does not list a transfer generator for {name!r}")

    def decorate(generator: TransferGenerator) -> TransferGenerator:
        TRANSFER_GENERATORS[name] = generator
        return generator

    return decorate


def import_loaders() -> None:
    """Import every loader module so that the registries are complete."""
    for module in _LOADER_MODULES:
        importlib.import_module(f"app.training.datasets.{module}")


def load_builtin(name: str, *, encoding: str | None = None) -> DatasetSplits:
    """Load a built-in dataset with all its tasks, checked against its catalog entry.

    `encoding`: one the entry's `encodings` offers (None: its default, the first); a dataset
    that offers none takes no encoding.
    """
    import_loaders()
    offered = BUILTIN_DATASETS[name].get("encodings", {})
    if encoding is not None and encoding not in offered:
        raise ValueError(f"built-in dataset {name!r} offers no encoding {encoding!r}")
    if offered:
        encoding = encoding or next(iter(offered))
        splits = BUILTIN_LOADERS[name](encoding=encoding)
    else:
        splits = BUILTIN_LOADERS[name]()
    _check_splits(splits, name=name, input_shape=offered.get(encoding))
    return splits


def load_dataset(spec: DatasetSpec, *, tasks: list[TaskSpec],
                 resolver: FileResolver | None = None) -> DatasetSplits:
    """Load a dataset (built-in, or an uploaded file through `resolver`) with the spec's tasks only."""
    if spec.builtin is None:
        return _load_file(spec, tasks=tasks, resolver=resolver)
    splits = load_builtin(spec.builtin, encoding=spec.encoding)
    names = [task.name for task in tasks]
    return DatasetSplits(
        x_train=splits.x_train, x_test=splits.x_test,
        y_train={name: splits.y_train[name] for name in names},
        y_test={name: splits.y_test[name] for name in names},
        notes=splits.notes, layout=splits.layout,
    )


def _load_file(spec: DatasetSpec, *, tasks: list[TaskSpec],
               resolver: FileResolver | None) -> DatasetSplits:
    from app.training.datasets.images import load_images_dataset
    from app.training.datasets.uploaded import load_npz_dataset, load_table_dataset

    if resolver is None:
        resolver = LocalFileResolver()
    paths = [resolver.resolve(ref) for ref in dataset_files(spec)]  # dataset.files: Parquet only
    path = paths[0]
    try:
        if spec.format == "npz":
            return load_npz_dataset(path, tasks=tasks)
        if spec.format == "images":
            return load_images_dataset(path, tasks=tasks, image_size=tuple(spec.image_size),
                                       channels=spec.channels)
        targets = {task.name: (spec.targets or {}).get(task.name, task.name) for task in tasks}
        return load_table_dataset(paths, fmt=spec.format, tasks=tasks, targets=targets, features=spec.features,
                                  split_column=spec.split_column, standardize=spec.standardize is not False,
                                  encoding=spec.encoding or "embedding", hash_buckets=spec.hash_buckets,
                                  categorical=spec.categorical)
    except TrainingError:
        raise
    except Exception as exc:  # pandas/numpy parse errors: say what the file is, not where it broke
        raise TrainingError(code="invalid_data", message=(
            f"dataset file {', '.join(dataset_files(spec))} could not be read as {spec.format}: "
            f"{type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}")) from exc


def generate_transfer_set(name: str, n: int, seed: int, *,
                          cache_dir: Path | None = None) -> torch.Tensor:
    """Return `n` new unlabelled inputs (n, *input_shape) float32 of a built-in dataset.

    The inputs come from the dataset's own generative process, never repeat a test (or train)
    input, and depend only on (name, n, seed): the first k of a larger set equal the set of k.
    With `cache_dir`, generated inputs are kept on disk and reused by later calls.
    """
    import_loaders()
    generator = TRANSFER_GENERATORS.get(name)
    if generator is None:
        able = ", ".join(sorted(TRANSFER_GENERATORS))
        raise TrainingError(code="no_transfer_generator", message=f"built-in dataset '{name}' "
                            f"cannot generate a transfer set (datasets that can: {able})")
    if n < 1:
        raise TrainingError(code="invalid_transfer_size",
                            message=f"a transfer set needs at least 1 sample, not {n}")
    return generator(n, seed, cache_dir=cache_dir)


def _check_splits(splits: DatasetSplits, *, name: str, input_shape: list[int] | None = None) -> None:
    meta = BUILTIN_DATASETS[name]
    expected = input_shape or meta["input_shape"]
    if list(splits.input_shape) != expected:
        raise TrainingError(code="invalid_data", message=f"dataset '{name}' has input shape "
                            f"{list(splits.input_shape)}, expected {expected}")
    for split, x, targets in (("train", splits.x_train, splits.y_train),
                              ("test", splits.x_test, splits.y_test)):
        if not torch.isfinite(x).all():
            raise TrainingError(code="invalid_data",
                                message=f"dataset '{name}': {split} inputs contain NaN or inf")
        for task, y in targets.items():
            if y.is_floating_point() and not torch.isfinite(y).all():
                raise TrainingError(code="invalid_data", message=f"dataset '{name}': {split} "
                                    f"targets of '{task}' contain NaN or inf")
            if len(y) != len(x):
                raise TrainingError(code="invalid_data", message=f"dataset '{name}': {split} "
                                    f"targets of '{task}' do not align with the inputs")
