"""Built-in `mnist1d-mt`: MNIST-1D (Greydanus 2020) from the mnist1d generator, plus transfer sets.

Train/test: `mnist1d.data.make_dataset(get_dataset_args())`, the package's own generator with its
default arguments (5000 signals of 40 steps, seed 42, first 80% train): the 4000/1000 split of the
paper. Nothing is downloaded: `mnist1d.get_dataset`, which fetches a pickle, is never called.

Transfer sets (unlabelled, any size): the same per-signal process (`mnist1d.transform` of the ten
digit templates, classes balanced) in chunks of `CHUNK` signals. `make_dataset` centres and scales
its whole pool by the pool's own mean and std; transfer signals get that same affine map (the raw
mean/std of the seed-42 pool), not their own, so they live in the training inputs' units.

Non-overlap with the test set, by two guards:
- distinct seed streams: the dataset is drawn from MT19937 seeded 42; chunk k of the transfer set
  with seed s is drawn from MT19937 seeded by `SeedSequence(s, spawn_key=(_TRANSFER_STREAM, k))`,
  and a chunk seed equal to 42 is skipped;
- an exact check: a generated signal equal (bitwise, as float32) to any train or test signal is
  dropped, and the set is filled up from the next chunk.
Chunks depend only on (seed, k), so the first m signals of a larger set equal the set of m.
"""

import contextlib
import os
import random
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from app.training.datasets.registry import (
    DatasetSplits, digit_targets, register_builtin, register_transfer_generator)

NAME = "mnist1d-mt"
CANONICAL_SEED = 42  # get_dataset_args()'s seed: the paper's dataset
CHUNK = 5000  # transfer signals per seeded chunk (a multiple of the 10 classes)
_TRANSFER_STREAM = 0x6D6E3164  # spawn-key tag ("mn1d") that keeps transfer seeds apart


@contextlib.contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed numpy's and Python's global RNGs (mnist1d draws from them) and restore them after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@lru_cache(maxsize=1)
def _canonical() -> dict[str, np.ndarray]:
    """Return the paper's dataset from make_dataset (x float32 (n, 40), y int64 (n,))."""
    from mnist1d.data import get_dataset_args, make_dataset

    with _seeded_global_rng(CANONICAL_SEED):
        data = make_dataset(get_dataset_args())
    return {
        "x_train": _readonly(data["x"].astype(np.float32)),
        "x_test": _readonly(data["x_test"].astype(np.float32)),
        "y_train": _readonly(data["y"].astype(np.int64)),
        "y_test": _readonly(data["y_test"].astype(np.int64)),
    }


@register_builtin(NAME)
def load_mnist1d_mt() -> DatasetSplits:
    """Load MNIST-1D (4000 train / 1000 test) with tasks digit, parity and large."""
    data = _canonical()
    splits = {}
    for split in ("train", "test"):
        digit = torch.tensor(data[f"y_{split}"])  # (n,) int64
        splits[split] = (torch.tensor(data[f"x_{split}"]),  # (n, 40) float32
                         digit_targets(digit))
    return DatasetSplits(x_train=splits["train"][0], x_test=splits["test"][0],
                         y_train=splits["train"][1], y_test=splits["test"][1])


def _raw_signals(labels: np.ndarray) -> np.ndarray:
    """Draw one raw (unnormalised) signal per label from the global RNG, as make_dataset does."""
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import transform

    args, templates = get_dataset_args(), get_templates()
    return np.stack([transform(templates["x"][label], templates["t"], args)[0]
                     for label in labels])  # (len(labels), 40) float64


@lru_cache(maxsize=1)
def _canonical_raw_stats() -> tuple[float, float]:
    """Return the raw mean and std that make_dataset normalised the seed-42 pool with."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    per_class = args.num_samples // 10
    with _seeded_global_rng(CANONICAL_SEED):  # the same draws, in make_dataset's order
        raw = _raw_signals(np.repeat(np.arange(10), per_class))
    return float(raw.mean()), float(raw.std())


def chunk_seed(seed: int, index: int) -> int:
    """Return the MT19937 seed of transfer chunk `index` for transfer seed `seed`."""
    sequence = np.random.SeedSequence(seed, spawn_key=(_TRANSFER_STREAM, index))
    value = int(sequence.generate_state(1)[0])
    return value + 1 if value == CANONICAL_SEED else value


def _generate_chunk(seed: int, index: int) -> np.ndarray:
    """Return transfer chunk `index` (CHUNK, 40) float32, normalised like the dataset."""
    mean, std = _canonical_raw_stats()
    with _seeded_global_rng(chunk_seed(seed, index)):
        labels = np.random.permutation(np.repeat(np.arange(10), CHUNK // 10))
        raw = _raw_signals(labels)
    return ((raw - mean) / std).astype(np.float32)


def _cached_chunk(seed: int, index: int, cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None:
        return _generate_chunk(seed, index)
    folder = Path(cache_dir) / NAME
    path = folder / f"transfer-mnist1d{version('mnist1d')}-seed{seed}-chunk{index}.npy"
    if path.exists():
        return np.load(path)
    chunk = _generate_chunk(seed, index)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:  # write then rename: readers never see half a file
        np.save(handle, chunk)
    os.replace(tmp, path)
    return chunk


@lru_cache(maxsize=1)
def _dataset_rows() -> frozenset[bytes]:
    data = _canonical()
    return frozenset(row.tobytes() for split in ("x_train", "x_test") for row in data[split])


@register_transfer_generator(NAME)
def generate_mnist1d_transfer(n: int, seed: int, *, cache_dir: Path | None = None) -> torch.Tensor:
    """Return `n` new unlabelled MNIST-1D signals (n, 40) float32, none equal to a dataset one."""
    taken = _dataset_rows()
    chunks, count, index = [], 0, 0
    while count < n:
        chunk = _cached_chunk(seed, index, cache_dir)
        fresh = chunk[[row.tobytes() not in taken for row in chunk]]
        chunks.append(fresh)
        count += len(fresh)
        index += 1
    return torch.from_numpy(np.concatenate(chunks)[:n].copy())
