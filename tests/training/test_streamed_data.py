"""Datasets on disk (data_placement "disk"): row stores equal the in-memory loader, roles are a
seeded function of the row index, chunk-shuffled batches visit every row once, and a job trains."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from app.training.datasets import streamed_source
from app.training.datasets.rowstore import RowWriter, open_store
from app.training.datasets.streamed import load_disk_data, load_streamed
from app.training.datasets.streamed_source import roles_of
from app.training.datasets.uploaded import TEST, TRAIN, VALIDATION, load_npz_dataset, load_table_dataset
from app.training.errors import TrainingError
from app.training.loop import train
from app.training.spec import DatasetSpec, JobSpec, TaskSpec
from app.training.streamed_batches import DiskBatches

TASKS = [TaskSpec(name="y", kind="multiclass", num_classes=3), TaskSpec(name="r", kind="regression")]


def table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(5, 2, size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    frame = pd.DataFrame({"a": a, "b": b, "color": color, "code": rng.integers(0, 4, size=n),
                          "y": ((a > 0).astype(int) + (color == "red")).astype(int),
                          "r": 2 * a + b, "split": rng.choice(["train", "val", "test"],
                                                              p=[.7, .1, .2], size=n)})
    frame.loc[3, "a"] = np.nan
    frame["y"] = frame["y"].astype("Int64")
    frame.loc[5, "y"] = None
    return frame


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streamed_source, "CHUNK_ROWS", 97)  # many chunks, none aligned with the splits
    monkeypatch.setattr(streamed_source, "NPZ_CHUNK_BYTES", 97 * 12)


@pytest.mark.parametrize("encoding", ["embedding", "onehot"])
def test_two_parquet_files_stream_to_the_in_memory_loaders_rows(tmp_path: Path, small_chunks: None,
                                                                encoding: str) -> None:
    frame = table(1500)
    whole, first, second = tmp_path / "all.parquet", tmp_path / "a.parquet", tmp_path / "b.parquet"
    frame.to_parquet(whole)
    frame.iloc[:700].to_parquet(first, row_group_size=300)
    frame.iloc[700:].reset_index(drop=True).to_parquet(second, row_group_size=300)
    spec = DatasetSpec(file="a", format="parquet", split_column="split", encoding=encoding,
                       categorical=["code"])
    disk = load_streamed(spec, tasks=TASKS, paths=[first, second], seed=0, directory=tmp_path / "rows")
    memory = load_table_dataset(whole, fmt="parquet", tasks=TASKS, targets={"y": "y", "r": "r"},
                                features=None, split_column="split", encoding=encoding,
                                categorical=["code"])
    assert disk.notes == memory.notes and disk.layout == memory.layout
    for on_disk, loaded in ((disk.x_train, memory.x_train), (disk.x_val, memory.x_val),
                            (disk.x_test, memory.x_test)):
        assert on_disk.shape == loaded.shape
        torch.testing.assert_close(on_disk[:], loaded, rtol=0, atol=1e-6)  # streamed mean/std sums
    assert torch.equal(disk.y_train["y"][:], memory.y_train["y"])
    assert torch.equal(disk.y_test["r"], memory.y_test["r"])


def test_npz_members_stream_compressed_or_not(tmp_path: Path, small_chunks: None) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(800, 2, 3)).astype(np.float64)
    arrays = {"x": x, "y_y": rng.choice(["cat", "dog", "eel"], size=800),
              "y_r": rng.normal(size=800), "split": rng.choice(["train", "val", "test"], size=800)}
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        spec = DatasetSpec(file="f", format="npz")
        disk = load_streamed(spec, tasks=TASKS, paths=[path], seed=0, directory=tmp_path / save.__name__)
        memory = load_npz_dataset(path, tasks=TASKS)
        assert disk.notes == memory.notes  # the label lookup note
        assert torch.equal(disk.x_train[:], memory.x_train) and torch.equal(disk.x_val[:], memory.x_val)
        assert torch.equal(disk.y_train["y"][:], memory.y_train["y"])
        assert torch.equal(disk.y_test["r"], memory.y_test["r"])


def test_npz_errors_name_the_array(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((10, 2)), y_y=np.zeros(9))
    with pytest.raises(Exception, match="`y_y` has 9 rows, `x` has 10"):
        load_streamed(DatasetSpec(file="f", format="npz"), tasks=TASKS[:1], paths=[path], seed=0,
                      directory=tmp_path / "rows")
    assert not any((tmp_path / "rows").glob("*/meta.json"))  # nothing half-written is left


def test_roles_are_seeded_by_row_index_whatever_the_chunking() -> None:
    index = np.arange(200_000)
    whole = roles_of(index, None, seed=3, fraction=0.1, carve=True)
    pieces = np.concatenate([roles_of(part, None, seed=3, fraction=0.1, carve=True)
                             for part in np.array_split(index, 7)])
    assert np.array_equal(whole, pieces)
    shares = np.bincount(whole, minlength=3) / len(index)
    assert abs(shares[TEST] - 0.2) < 0.005 and abs(shares[VALIDATION] - 0.08) < 0.005
    other_seed = roles_of(index, None, seed=4, fraction=0.1, carve=True)
    assert np.array_equal(whole == TEST, other_seed == TEST)  # the test split does not move
    assert not np.array_equal(whole, other_seed)  # the validation carve does
    given = roles_of(np.arange(4), np.array(["train", "VAL", "1", "0"]), seed=0, fraction=0.1,
                     carve=False)
    assert given.tolist() == [TRAIN, VALIDATION, TEST, TRAIN]


def test_disk_batches_visit_every_row_once_in_full_batches(tmp_path: Path) -> None:
    writer = RowWriter(tmp_path / "s", {"x": ("<f4", (2,)), "y/t": ("<i8", ())})
    rows = 1000
    writer.append({"x": np.stack([np.arange(rows), -np.arange(rows)], 1), "y/t": np.arange(rows)})
    writer.close()
    store = open_store(tmp_path / "s")
    assert store is not None
    batches = DiskBatches(x=store["x"], targets={"t": store["y/t"]}, labelled=None, soft=None,
                          placement="disk", device=torch.device("cpu"), batch_size=64,
                          soft_tasks=None, features=False)
    batches.chunks.chunk_rows = 192  # five whole chunks and a short one of 40 rows

    def epoch(seed: int) -> list[torch.Tensor]:
        return [b.targets["t"] for b in batches.epoch(batches.draw_order(torch.Generator().manual_seed(seed)))]

    seen = epoch(0)
    assert [len(t) for t in seen] == [64] * 15 + [40]  # only the epoch's last batch is short
    assert sorted(torch.cat(seen).tolist()) == list(range(rows))
    assert all(torch.equal(a, b) for a, b in zip(seen, epoch(0), strict=True))  # repeatable
    assert not torch.equal(torch.cat(seen), torch.cat(epoch(1)))


def disk_spec(path: Path, **training: object) -> JobSpec:
    return JobSpec.model_validate({
        "name": "disk", "dataset": {"file": str(path), "format": "parquet"},
        "tasks": [{"name": "y", "kind": "multiclass", "num_classes": 3},
                  {"name": "r", "kind": "regression"}],
        "teachers": [{"name": "t", "tasks": ["y", "r"], "source": {
            "train": {"arch": {"type": "mlp", "hidden": [16]}, "epochs": 6, "lr": 0.02,
                      "batch_size": 32}}}],
        "student": {"type": "mlp", "trunk": [8], "head": [8]}, "export": [],
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.005, "seed": 0, "device": "cpu",
                     "data_placement": "disk", **training}})


def test_a_disk_job_trains_repeatably_and_reuses_the_teacher_cache(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    table(1200).drop(columns=["split"]).to_parquet(path)
    first = train(disk_spec(path), tmp_path / "w1", cache_dir=tmp_path / "cache").results
    again = train(disk_spec(path), tmp_path / "w2", cache_dir=tmp_path / "cache").results
    assert set(first["data_placement"].values()) == {"disk"}
    assert first["teacher_cache"] == {"t": "miss"} and again["teacher_cache"] == {"t": "hit"}
    assert first["tasks"] == again["tasks"]
    rows = first["rows"]
    assert rows["train"] + rows["validation"] + rows["test"] == 1199  # one row lacks its target
    assert first["tasks"]["y"]["teacher"] > 0.6  # the teacher learned the rule, the rows line up
    stored = json.loads((tmp_path / "w1" / "artifacts" / "results.json").read_text())
    assert stored["tasks"] == first["tasks"]


@pytest.mark.parametrize(("change", "kind"), [
    ({"dataset": {"builtin": "digits-mt"}}, "disk_needs_file"),
    ({"distillation": {"label_fraction": 0.5}}, "disk_label_fraction"),
])
def test_the_spec_refuses_what_disk_cannot_stream(tmp_path: Path, change: dict, kind: str) -> None:
    spec = disk_spec(tmp_path / "t.parquet").model_dump(mode="json")
    for section, value in change.items():
        spec[section] = value if section == "dataset" else {**spec[section], **value}
    if "dataset" in change:
        spec["tasks"] = [{"name": "digit", "kind": "multiclass", "num_classes": 10}]
        spec["teachers"][0]["tasks"] = ["digit"]
    with pytest.raises(Exception) as error:
        JobSpec.model_validate(spec)
    assert kind in str(error.value) or kind in repr(error.value.errors())  # type: ignore[attr-defined]


def test_zip_reader_needs_npy_members(tmp_path: Path) -> None:
    path = tmp_path / "plain.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"not an npy file")
        archive.writestr("y_y.npy", b"nor this")
    with pytest.raises(TrainingError, match="could not be read as npz: ValueError"):
        load_disk_data(DatasetSpec(file=str(path), format="npz"), tasks=TASKS[:1], seed=0,
                       resolver=None, device=torch.device("cpu"), directory=tmp_path / "rows")


def test_the_dry_run_reads_a_disk_dataset_in_chunks(tmp_path: Path) -> None:
    from app.training.preflight import dry_run

    path = tmp_path / "t.parquet"
    table(900).drop(columns=["split"]).to_parquet(path)
    summary = dry_run(disk_spec(path))
    dataset = summary["dataset"]
    assert dataset["input_shape"] == [4]  # a, b, code as numbers; color as a category code
    assert dataset["layout"]["names"] == ["color"]
    assert dataset["train_rows"] == len(load_streamed(
        disk_spec(path).dataset, tasks=TASKS, paths=[path], seed=0, directory=tmp_path / "rows").x_train)


def test_a_cancelled_disk_job_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    from app.training.callbacks import TrainCallbacks
    from app.training.errors import TrainingCancelled

    class StopAfterStudentEpoch1(TrainCallbacks):
        stopping = False

        def on_epoch_end(self, **event: object) -> None:
            self.stopping = self.stopping or (event["stage"], event["epoch"]) == ("student", 1)

        def should_stop(self) -> bool:
            return self.stopping

    path = tmp_path / "t.parquet"
    table(1000).drop(columns=["split"]).to_parquet(path)
    spec = disk_spec(path, epochs=3)
    uninterrupted = train(spec, tmp_path / "once", cache_dir=tmp_path / "cache").results
    with pytest.raises(TrainingCancelled):
        train(spec, tmp_path / "twice", cache_dir=tmp_path / "cache", callbacks=StopAfterStudentEpoch1())
    resumed = train(spec, tmp_path / "twice", cache_dir=tmp_path / "cache").results
    assert resumed["tasks"] == uninterrupted["tasks"]  # the same chunk orders after the resume
