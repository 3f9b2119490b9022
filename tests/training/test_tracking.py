"""TensorBoard export: every train() writes tensorboard.zip, one run per stage, whose scalars are
the epochs the callbacks saw; read back with TensorBoard's own EventAccumulator."""

import json
import math
import zipfile
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.training.callbacks import TrainCallbacks
from app.training.evaluate import PRIMARY_METRICS
from app.training.loop import train
from app.training.tracking import ARCHIVE_NAME, run_name
from tests.training.conftest import tiny_spec


class Recorder(TrainCallbacks):
    """Keep every epoch end (what the worker turns into "epoch" events); crash at (stage, epoch)."""

    def __init__(self, crash_at: tuple[str, int] | None = None) -> None:
        self.crash_at = crash_at
        self.epochs: list[dict] = []
        self.ended: dict | None = None

    def on_epoch_end(self, **event) -> None:
        self.epochs.append(event)
        if (event["stage"], event["epoch"]) == self.crash_at:
            raise RuntimeError("worker died")

    def on_train_end(self, *, results: dict, artifacts: list[Path]) -> None:
        self.ended = {"results": results, "artifacts": [path.name for path in artifacts]}


def read_runs(archive: Path, into: Path) -> dict[str, dict[str, dict[int, float]]]:
    """Return run -> tag -> {step: value} from the zip's event files."""
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(into)
    runs: dict[str, dict[str, dict[int, float]]] = {}
    for folder in sorted(p for p in into.iterdir() if p.is_dir()):
        assert list(folder.glob("events.out.tfevents.*")), folder
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        runs[folder.name] = {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in tags}
        for tag in tags:  # one value per step: a resumed job's replayed epochs are not doubled
            assert len(accumulator.Scalars(tag)) == len(runs[folder.name][tag]), (folder.name, tag)
    return runs


def expected_runs(epochs: list[dict], tasks) -> dict[str, dict[str, dict[int, float]]]:
    """Return what the epoch ends say the event files must hold (the latest value per step)."""
    names = {task.name: PRIMARY_METRICS[task.kind][0] for task in tasks}
    runs: dict[str, dict[str, dict[int, float]]] = {}
    for event in epochs:
        run = runs.setdefault(run_name(event["stage"]), {})
        scalars = {f"validation/{task}.{names[task]}": v for task, v in event["metrics"].items()}
        scalars.update({f"loss/{name}": v for name, v in event["losses"].items()})
        scalars["time/epoch_seconds"] = event["seconds"]
        for tag, value in scalars.items():
            run.setdefault(tag, {})[event["epoch"]] = value
    return runs


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for run, tags in want.items():
        assert got[run].keys() == tags.keys(), run
        for tag, steps in tags.items():
            assert got[run][tag].keys() == steps.keys(), (run, tag)
            for step, value in steps.items():  # event files keep float32
                assert math.isclose(got[run][tag][step], value, rel_tol=1e-6, abs_tol=1e-7), (run, tag, step)


def test_every_stage_and_epoch_lands_in_tensorboard_as_the_callbacks_saw_it(tmp_path: Path):
    spec = tiny_spec()
    recorder = Recorder()
    result = train(spec, tmp_path / "work", callbacks=recorder, job_id="job-tb")
    archive = tmp_path / "work" / "artifacts" / ARCHIVE_NAME
    assert archive in result.artifacts and archive.is_file()
    runs = read_runs(archive, tmp_path / "tb")

    stages = [stage["name"] for stage in result.results["stages"]]
    assert sorted(runs) == sorted(run_name(s) for s in stages) == sorted(
        ["teacher.digit-teacher", "teacher.aux-teacher", "student", "baseline"])
    assert_same(runs, expected_runs(recorder.epochs, spec.tasks))
    for stage in result.results["stages"]:  # every epoch of every stage, nothing more
        assert set(runs[run_name(stage["name"])]["loss/total"]) == set(range(1, stage["epochs"] + 1))
    assert set(runs["student"]) >= {"validation/digit.accuracy", "loss/total", "time/epoch_seconds",
                                    f"validation/large.{PRIMARY_METRICS['binary'][0]}"}
    assert any(tag.startswith("loss/") and tag != "loss/total" for tag in runs["student"])
    # The end hook hears the same results and artifacts as the caller.
    assert recorder.ended == {"results": result.results,
                              "artifacts": [path.name for path in result.artifacts]}
    saved = json.loads((tmp_path / "work" / "artifacts" / "results.json").read_text())
    assert saved == result.results


def test_learned_task_weights_are_their_own_tags(tmp_path: Path):
    spec = tiny_spec(weighting={"method": "uncertainty"}, training={"epochs": 2})
    recorder = Recorder()
    result = train(spec, tmp_path / "work", callbacks=recorder)
    runs = read_runs(tmp_path / "work" / "artifacts" / ARCHIVE_NAME, tmp_path / "tb")
    weights = {tag for tag in runs["student"] if tag.startswith("weight/")}
    assert weights == {"weight/digit", "weight/parity", "weight/large"}
    student = [e for e in recorder.epochs if e["stage"] == "student"]
    assert [runs["student"]["weight/digit"][e["epoch"]] for e in student] == pytest.approx(
        [e["losses"]["weight.digit"] for e in student], rel=1e-6)
    assert result.results["stages"]


def test_a_resumed_job_has_one_curve_and_no_runs_of_an_earlier_spec(tmp_path: Path):
    work = tmp_path / "work"
    # An earlier, different job crashed in this workdir: its runs must not reach the archive.
    other = tiny_spec(teachers=[{"name": "old-teacher", "tasks": ["digit", "parity", "large"],
                                 "source": {"train": {"arch": {"type": "mlp", "hidden": [8]},
                                                      "epochs": 1}}}])
    with pytest.raises(RuntimeError, match="worker died"):
        train(other, work, callbacks=Recorder(crash_at=("student", 1)))
    assert (work / "tensorboard" / "teacher.old-teacher").is_dir()

    # This job crashes at student epoch 2 with epoch 1 unsaved (a long checkpoint interval), so
    # the resumed attempt replays student epochs 1 and 2 after the event files already hold them.
    spec = tiny_spec()
    first = Recorder(crash_at=("student", 2))
    with pytest.raises(RuntimeError, match="worker died"):
        train(spec, work, callbacks=first, checkpoint_interval=3600)
    resumed = Recorder()
    train(spec, work, callbacks=resumed, checkpoint_interval=3600)
    assert resumed.epochs[0]["stage"] == "student" and resumed.epochs[0]["epoch"] == 1

    runs = read_runs(work / "artifacts" / ARCHIVE_NAME, tmp_path / "tb")
    assert "teacher.old-teacher" not in runs
    # Teachers come from the first attempt, student and baseline from the resumed one.
    assert_same(runs, expected_runs(first.epochs + resumed.epochs, spec.tasks))
