"""Several Parquet files as one dataset (`dataset.files`): the same job as one file holding the same
rows, in memory and on disk; files whose columns differ are refused before a row is read; the
teacher cache tells file lists apart by their rows; the dry run counts every file's rows."""

import itertools
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from app.training.datasets.registry import load_dataset
from app.training.datasets.streamed import load_disk_data
from app.training.errors import TrainingError
from app.training.files import LocalFileResolver
from app.training.loop import train
from app.training.preflight import dry_run
from app.training.spec import DatasetSpec, JobSpec
from app.training.text import read_text_table
from tests.training.test_streamed_data import TASKS, table

ROWS = 900


def parts(tmp_path: Path, frame: pd.DataFrame, cuts: list[int], name: str = "part") -> list[Path]:
    """Write `frame` as consecutive Parquet files split at `cuts`; return their paths."""
    paths, bounds = [], [0, *cuts, len(frame)]
    for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
        path = tmp_path / f"{name}-{index}.parquet"
        frame.iloc[start:stop].reset_index(drop=True).to_parquet(path, row_group_size=128)
        paths.append(path)
    return paths


def job(dataset: dict[str, Any], placement: str) -> JobSpec:
    return JobSpec.model_validate({
        "name": "files", "dataset": {"format": "parquet", **dataset},
        "tasks": [{"name": "y", "kind": "multiclass", "num_classes": 3},
                  {"name": "r", "kind": "regression"}],
        "teachers": [{"name": "t", "tasks": ["y", "r"], "source": {
            "train": {"arch": {"type": "mlp", "hidden": [16]}, "epochs": 4, "lr": 0.02,
                      "batch_size": 32}}}],
        "student": {"type": "mlp", "trunk": [8], "head": [8]}, "export": ["safetensors"],
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.005, "seed": 0, "device": "cpu",
                     "data_placement": placement}})


@pytest.mark.parametrize("placement", ["device", "disk"])
def test_two_files_train_to_the_weights_of_one_file_with_their_rows(tmp_path: Path, placement: str) -> None:
    frame = table(ROWS).drop(columns=["split"])
    whole = tmp_path / "whole.parquet"
    frame.to_parquet(whole, row_group_size=128)
    first, second = parts(tmp_path, frame, [400])
    one = train(job({"file": str(whole)}, placement), tmp_path / "one", cache_dir=tmp_path / "c1").results
    two = train(job({"files": [str(first), str(second)]}, placement), tmp_path / "two",
                cache_dir=tmp_path / "c2").results
    assert set(two["data_placement"].values()) == {placement}
    assert two["rows"] == one["rows"] and sum(two["rows"][k] for k in ("train", "validation", "test")) == ROWS - 1
    assert two["tasks"] == one["tasks"]
    weights = [load_file(tmp_path / run / "artifacts" / "student.safetensors") for run in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    assert all(weights[0][name].equal(weights[1][name]) for name in weights[0])  # bit-identical


@pytest.mark.parametrize("placement", ["device", "disk"])
def test_the_teacher_cache_key_covers_every_file(tmp_path: Path, placement: str) -> None:
    frame = table(ROWS).drop(columns=["split"])
    first, second = parts(tmp_path, frame, [400])
    other = table(ROWS, seed=1).drop(columns=["split"]).iloc[400:].reset_index(drop=True)
    changed = tmp_path / "changed.parquet"
    other.to_parquet(changed)  # same schema and row count as `second`, other rows
    cache = tmp_path / "cache"

    def outcome(files: list[Path], run: str) -> str:
        spec = job({"files": [str(p) for p in files]}, placement)
        return train(spec, tmp_path / run, cache_dir=cache).results["teacher_cache"]["t"]

    assert outcome([first, second], "a") == "miss"
    assert outcome([first, changed], "b") == "miss"  # one file differs: never the first list's outputs
    assert outcome([first, second], "c") == "hit"  # the same rows again


@pytest.mark.parametrize("placement", ["device", "disk"])
def test_files_whose_columns_differ_are_refused_before_reading_rows(tmp_path: Path, placement: str) -> None:
    frame = table(300).drop(columns=["split"])
    first, second = parts(tmp_path, frame, [150])
    lacking, retyped = tmp_path / "lacking.parquet", tmp_path / "retyped.parquet"
    frame.drop(columns=["b"]).to_parquet(lacking)
    frame.assign(code=frame["code"].astype(float)).to_parquet(retyped)
    for bad, expected in ((lacking, "lacks columns ['b']"), (retyped, "'code' is double, not int64")):
        spec = DatasetSpec(files=[str(first), str(second), str(bad)])
        with pytest.raises(TrainingError) as error:
            if placement == "disk":
                load_disk_data(spec, tasks=TASKS, seed=0, resolver=None, device=torch.device("cpu"),
                               directory=tmp_path / "rows")
            else:
                load_dataset(spec, tasks=TASKS)
        assert error.value.code == "dataset_schema_mismatch"
        assert error.value.message.startswith("dataset.files[2]: ") and expected in error.value.message


@pytest.mark.parametrize("placement", ["device", "disk"])
def test_the_dry_run_counts_the_rows_of_every_file(tmp_path: Path, placement: str) -> None:
    frame = table(ROWS).drop(columns=["split"])
    files = [str(p) for p in parts(tmp_path, frame, [200, 500])]
    dataset = dry_run(job({"files": files}, placement))["dataset"]
    alone = dry_run(job({"files": files[:1]}, placement))["dataset"]
    counted = dataset["train_rows"] + dataset["validation_rows"] + dataset["test_rows"]
    assert counted == ROWS - 1  # every file's rows but the one without a target
    assert alone["train_rows"] + alone["validation_rows"] + alone["test_rows"] == 199  # row 5 too


def test_text_columns_read_every_file(tmp_path: Path) -> None:
    frame = pd.DataFrame({"t": [f"row {i} says {'yes' if i % 3 else 'no'}" for i in range(60)],
                          "y": [i % 3 for i in range(60)]})
    whole = tmp_path / "whole.parquet"
    frame.to_parquet(whole)
    files = [str(p) for p in parts(tmp_path, frame, [25])]
    tasks = TASKS[:1]
    one = read_text_table(DatasetSpec(file=str(whole), format="parquet", text=["t"]), tasks=tasks,
                          resolver=LocalFileResolver())
    two = read_text_table(DatasetSpec(files=files, text=["t"]), tasks=tasks, resolver=LocalFileResolver())
    assert two.texts_train == one.texts_train and two.texts_test == one.texts_test
    assert all(two.y_train[k].tolist() == one.y_train[k].tolist() for k in one.y_train)


def test_the_spec_section_rules(tmp_path: Path) -> None:
    stored = DatasetSpec(files=["a", "b"]).model_dump(mode="json")
    assert stored["files"] == ["a", "b"] and stored["format"] == "parquet"  # written back
    assert "file" not in stored
    for bad, kind in (({"files": ["a"], "file": "b"}, "dataset_source"),
                      ({"files": ["a"], "builtin": "digits-mt"}, "dataset_source"),
                      ({"files": ["a", "b"], "format": "npz"}, "dataset_files_format"),
                      ({"files": ["a", "b", "a"]}, "dataset_files_repeated"),
                      ({"files": []}, "too_short")):
        with pytest.raises(Exception) as error:
            DatasetSpec.model_validate(bad)
        assert kind in [e["type"] for e in error.value.errors()], (bad, error.value)  # type: ignore[attr-defined]
    with pytest.raises(Exception, match=r"dataset.files\[2\]: 'a' is dataset.files\[0\] already"):
        DatasetSpec.model_validate({"files": ["a", "b", "a"]})


@pytest.mark.parametrize("placement", ["device", "disk"])
def test_string_and_large_string_files_read_as_one_table(tmp_path: Path, placement: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = table(ROWS).drop(columns=["split"])
    whole = tmp_path / "whole.parquet"
    frame.to_parquet(whole)
    first, second = parts(tmp_path, frame, [400])
    for path, text in ((first, pa.string()), (second, pa.large_string())):  # as other writers do
        read = pq.read_table(path)
        pq.write_table(read.set_column(read.schema.get_field_index("color"), "color",
                                       read.column("color").cast(text)), path)
    assert str(pq.read_schema(first).field("color").type) != str(pq.read_schema(second).field("color").type)

    def load(spec: DatasetSpec, name: str) -> Any:
        if placement == "disk":
            return load_disk_data(spec, tasks=TASKS, seed=0, resolver=None, device=torch.device("cpu"),
                                  directory=tmp_path / name)
        return load_dataset(spec, tasks=TASKS)

    one = load(DatasetSpec(file=str(whole), format="parquet"), "one")
    two = load(DatasetSpec(files=[str(first), str(second)]), "two")
    assert two.layout == one.layout and two.notes == one.notes
    assert torch.equal(two.x_train[:], one.x_train[:]) and torch.equal(two.x_test[:], one.x_test[:])
