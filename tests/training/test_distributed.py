"""Data-parallel training (resources.devices) with real gloo ranks on the CPU: the shards, the
equality with one process, learned weights in sync, and the faults (cancel, a killed rank)."""

import csv
import multiprocessing
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from app.training.callbacks import TrainCallbacks
from app.training.distributed import RankFailed, Ranks
from app.training.errors import TrainingCancelled
from app.training.launch import train_job
from tests.procs import spawned_ranks
from tests.training.conftest import tiny_spec

NO_DROPOUT = {"type": "mlp", "trunk": [16], "head": [8], "dropout": 0.0}


@pytest.fixture
def rank_marker(monkeypatch: pytest.MonkeyPatch) -> str:
    """An environment marker every rank spawned by this test inherits (to find orphans)."""
    marker = f"DDP_TEST_MARKER={uuid.uuid4().hex}"
    name, value = marker.split("=")
    monkeypatch.setenv(name, value)
    return marker


def losses(workdir: Path) -> list[dict[str, str]]:
    with open(workdir / "artifacts" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("rows", [0, 1, 2, 5, 12, 13, 24])
def test_shards_split_each_global_batch_without_overlap(world: int, rows: int) -> None:
    batch = 4  # per rank
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(rows))
    shards = [Ranks(rank, world).shard(order, batch) for rank in range(world)]
    taken = torch.cat(shards)
    assert len(set(taken.tolist())) == len(taken)  # no row on two ranks
    full = rows // (batch * world) * batch * world
    tail = rows - full
    assert len(taken) == (rows if tail >= world else full)  # a tail shorter than world is left out
    for step in range(full // (batch * world)):  # each global batch is the single-process one
        union = torch.cat([shard[step * batch:(step + 1) * batch] for shard in shards])
        assert union.tolist() == order[step * batch * world:(step + 1) * batch * world].tolist()
    sizes = [len(shard) - full // world for shard in shards]
    assert max(sizes) - min(sizes) <= 1


def test_devices_must_divide_every_batch() -> None:
    with pytest.raises(ValidationError, match=r"resources.devices: training.batch_size 126 .* 4 devices"):
        tiny_spec(resources={"devices": 4}, training={"batch_size": 126})
    assert "resources" not in tiny_spec().model_dump()  # one device: dumps as before the section
    assert tiny_spec(resources={"devices": 2}).model_dump()["resources"] == {"devices": 2}


@pytest.mark.slow
def test_two_ranks_train_as_one_process(tmp_path: Path, rank_marker: str) -> None:
    """Same global batch: the first step's loss within 1e-5, final metrics within 0.5 points."""
    results: dict[int, Any] = {}
    first: dict[int, list[dict[str, str]]] = {}
    for world in (1, 2):
        # one step per epoch (2048 > 1211 rows): the epoch's loss is the first step's
        spec = tiny_spec(resources={"devices": world}, student=NO_DROPOUT,
                         training={"epochs": 1, "batch_size": 2048}, baseline=False)
        train_job(spec, tmp_path / f"first-{world}", cache_dir=tmp_path / f"cache-{world}")
        first[world] = losses(tmp_path / f"first-{world}")
        spec = tiny_spec(resources={"devices": world}, student=NO_DROPOUT, training={"epochs": 8})
        results[world] = train_job(spec, tmp_path / f"full-{world}",
                                   cache_dir=tmp_path / f"cache-{world}").results
    student = [row for row in first[2] if row["stage"] == "student"]
    one = [row for row in first[1] if row["stage"] == "student"]
    assert float(student[0]["loss.total"]) == pytest.approx(float(one[0]["loss.total"]), abs=1e-5)
    for task, metrics in results[1]["tasks"].items():
        for model in ("student", "baseline", "teacher"):
            assert abs(results[2]["tasks"][task][model] - metrics[model]) <= 0.005, (task, model)
    assert results[1]["world_size"] == 1 and results[2]["world_size"] == 2
    ranks = results[2]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["rows_per_second"] > 0 for r in ranks)
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]  # weights stayed in sync
    assert spawned_ranks(rank_marker) == []


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uncertainty", "gradnorm", "dwa"])
def test_learned_task_weights_stay_in_sync(tmp_path: Path, method: str) -> None:
    spec = tiny_spec(resources={"devices": 2}, student=NO_DROPOUT, weighting={"method": method},
                     training={"epochs": 3}, baseline=False)
    ranks = train_job(spec, tmp_path / "run", cache_dir=tmp_path / "cache").results["ranks"]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]


class StopAt(TrainCallbacks):
    """Cancel (should_stop) or kill a rank once `stage` reaches `epoch`."""

    def __init__(self, stage: str, epoch: int, *, kill: bool = False) -> None:
        self.stage, self.epoch, self.kill, self.fired = stage, epoch, kill, False

    def on_epoch_end(self, *, stage: str, epoch: int, **kwargs: Any) -> None:
        if stage == self.stage and epoch == self.epoch and not self.fired:
            self.fired = True
            if self.kill:
                for process in multiprocessing.active_children():
                    if process.name == "distillery-rank-1":
                        os.kill(process.pid, signal.SIGKILL)

    def should_stop(self) -> bool:
        return self.fired and not self.kill


@pytest.mark.slow
def test_cancel_stops_every_rank(tmp_path: Path, rank_marker: str) -> None:
    spec = tiny_spec(resources={"devices": 2}, student=NO_DROPOUT, training={"epochs": 6})
    with pytest.raises(TrainingCancelled):
        train_job(spec, tmp_path / "run", callbacks=StopAt("student", 2),
                  cache_dir=tmp_path / "cache")
    assert spawned_ranks(rank_marker) == []


@pytest.mark.slow
def test_killed_rank_fails_the_group_and_the_job_resumes_to_the_same_results(
        tmp_path: Path, rank_marker: str) -> None:
    spec = tiny_spec(resources={"devices": 2}, student=NO_DROPOUT, training={"epochs": 4})
    whole = train_job(spec, tmp_path / "whole", cache_dir=tmp_path / "cache").results
    with pytest.raises(RankFailed, match="killed by signal 9"):
        train_job(spec, tmp_path / "run", callbacks=StopAt("student", 2, kill=True),
                  cache_dir=tmp_path / "cache")
    assert spawned_ranks(rank_marker) == []
    resumed = train_job(spec, tmp_path / "run", cache_dir=tmp_path / "cache").results
    assert resumed["tasks"] == whole["tasks"]
    assert resumed["ranks"][0]["params_sha256"] == whole["ranks"][0]["params_sha256"]
    assert spawned_ranks(rank_marker) == []


RANK0_SCRIPT = """
import sys
from pathlib import Path
from app.training.launch import train_job
from tests.procs import spawned_ranks
from tests.training.conftest import tiny_spec
if __name__ == "__main__":
    spec = tiny_spec(resources={"devices": 2}, training={"epochs": 500})
    train_job(spec, Path(sys.argv[1]) / "run", cache_dir=Path(sys.argv[1]) / "cache")
"""


@pytest.mark.slow
def test_killing_rank_zero_takes_every_rank_with_it(tmp_path: Path, rank_marker: str) -> None:
    """The job process (rank 0) SIGKILLed: the kernel kills the ranks it started (PDEATHSIG)."""
    import subprocess
    import sys
    import time

    script = tmp_path / "rank0.py"
    script.write_text(RANK0_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    rank0 = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=root,
                             env={**os.environ, "PYTHONPATH": str(root)})
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "run" / "checkpoint.pt").exists():  # training, both ranks up
            assert rank0.poll() is None and time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        assert spawned_ranks(rank_marker)
        rank0.kill()
        rank0.wait()
        deadline = time.monotonic() + 5
        while spawned_ranks(rank_marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert spawned_ranks(rank_marker) == []
    finally:
        rank0.kill()
