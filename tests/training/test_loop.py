"""train(): artifacts and results.json contract, callbacks, resume, cancel, divergence."""

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.training.checkpoint import CHECKPOINT_NAME, FINISHED_DIR, load_checkpoint, read_finished
from app.training.loop import Result, TrainCallbacks, TrainingCancelled, TrainingError, train
from app.training.spec import spec_sha256
from tests.training.conftest import tiny_spec


class Recorder(TrainCallbacks):
    """Record the hooks; raise from on_epoch_end at (stage, epoch) to simulate a crash."""

    def __init__(self, crash_at: tuple[str, int] | None = None) -> None:
        self.crash_at = crash_at
        self.stages: list[tuple[str, int]] = []
        self.epochs: list[dict] = []

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        self.stages.append((stage, epochs))

    def on_epoch_end(self, **event) -> None:
        self.epochs.append(event)
        if (event["stage"], event["epoch"]) == self.crash_at:
            raise RuntimeError("worker died")


def test_results_json_follows_the_contract(tiny_run: tuple[Result, Path]):
    result, workdir = tiny_run
    out = workdir / "artifacts"
    assert sorted(path.name for path in result.artifacts) == [
        "metrics.csv", "report.html", "report.png", "results.json", "student.json", "student.onnx", "student.safetensors",
        "tensorboard.zip"]
    assert all(path.parent == out and path.is_file() for path in result.artifacts)
    results = json.loads((out / "results.json").read_text())
    assert results == result.results
    assert results["job_id"] == "job-tiny"
    assert results["spec_sha256"] == spec_sha256(tiny_spec())
    assert list(results)[:8] == ["job_id", "spec_sha256", "tasks", "validation", "params",
                                 "stages", "selection", "timing"]
    assert set(results["validation"]["digit"]) == {"teacher", "student", "baseline"}
    assert results["rows"] == {"train": 1211, "validation": 136, "test": 450, "labelled": 1211,
                               "transfer": 0}
    assert all(s["steps"] == s["epochs"] * 10 for s in results["stages"])  # 1211 rows / 128
    assert results["diagnostics"] == []
    assert set(results["tasks"]) == {"digit", "parity", "large"}
    for entry in results["tasks"].values():
        assert entry["metric"] == "accuracy" and entry["higher_is_better"] is True
        assert all(0.0 <= entry[model] <= 1.0 for model in ("teacher", "student", "baseline"))
    assert results["tasks"]["digit"]["teacher"] > 0.5  # a 2-epoch teacher already learns
    params = results["params"]
    assert params["teacher"] == sum(params["teachers"].values()) and params["student"] > 0
    assert [(s["name"], s["epochs"]) for s in results["stages"]] == [
        ("teacher:digit-teacher", 2), ("teacher:aux-teacher", 2), ("student", 3), ("baseline", 3)]
    assert results["timing"]["total_seconds"] >= sum(s["seconds"] for s in results["stages"])


def test_metrics_csv_has_a_row_per_epoch_per_stage(tiny_run: tuple[Result, Path]):
    _, workdir = tiny_run
    with open(workdir / "artifacts" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["stage"], int(row["epoch"])) for row in rows] == [
        ("teacher:digit-teacher", 1), ("teacher:digit-teacher", 2),
        ("teacher:aux-teacher", 1), ("teacher:aux-teacher", 2),
        ("student", 1), ("student", 2), ("student", 3),
        ("baseline", 1), ("baseline", 2), ("baseline", 3)]
    student = rows[4]
    assert {"digit.accuracy", "large.accuracy", "loss.digit.soft", "loss.large.hard",
            "loss.total"} <= {column for column, value in student.items() if value}
    assert rows[0]["loss.digit.soft"] == ""  # teachers learn from hard labels only


def test_callbacks_report_stages_and_progress(tmp_path: Path):
    recorder = Recorder()
    train(tiny_spec(), tmp_path, callbacks=recorder)
    assert recorder.stages == [("teacher:digit-teacher", 2), ("teacher:aux-teacher", 2),
                               ("student", 3), ("baseline", 3)]
    progress = [event["progress"] for event in recorder.epochs]
    assert progress == sorted(progress) and progress[0] == pytest.approx(1 / 10) and progress[-1] == 1.0
    student = next(event for event in recorder.epochs if event["stage"] == "student")
    assert set(student["metrics"]) == {"digit", "parity", "large"}
    assert {"digit.hard", "digit.soft", "total"} <= set(student["losses"])


def test_same_seed_same_results(tiny_run: tuple[Result, Path], tmp_path: Path):
    result, _ = tiny_run
    assert train(tiny_spec(), tmp_path).results["tasks"] == result.results["tasks"]


@pytest.mark.parametrize("crash_at", [("teacher:aux-teacher", 1), ("student", 2)])
def test_resume_after_a_crash_matches_an_uninterrupted_run(
        tiny_run: tuple[Result, Path], tmp_path: Path, crash_at: tuple[str, int]):
    uninterrupted, reference = tiny_run
    with pytest.raises(RuntimeError, match="worker died"):
        train(tiny_spec(), tmp_path, callbacks=Recorder(crash_at=crash_at), job_id="job-tiny")
    assert (tmp_path / CHECKPOINT_NAME).exists()

    recorder = Recorder()
    resumed = train(tiny_spec(), tmp_path, callbacks=recorder, job_id="job-tiny")
    assert recorder.stages[0][0] == crash_at[0]  # finished stages are skipped
    assert (recorder.epochs[0]["stage"], recorder.epochs[0]["epoch"]) == (crash_at[0], crash_at[1] + 1)
    assert resumed.results["tasks"] == uninterrupted.results["tasks"]
    got = load_file(tmp_path / "artifacts" / "student.safetensors")
    want = load_file(reference / "artifacts" / "student.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[name], want[name]) for name in want)

    def rows(workdir: Path) -> list[dict]:
        with open(workdir / "artifacts" / "metrics.csv", newline="") as handle:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]

    assert rows(tmp_path) == rows(reference)


def test_should_stop_cancels_between_steps(tmp_path: Path):
    class StopSoon(TrainCallbacks):
        calls = 0

        def should_stop(self) -> bool:
            self.calls += 1
            return self.calls > 3

    with pytest.raises(TrainingCancelled):
        train(tiny_spec(), tmp_path, callbacks=StopSoon())
    assert not (tmp_path / "artifacts" / "results.json").exists()


def test_divergence_fails_with_a_code_and_keeps_the_last_good_checkpoint(tmp_path: Path):
    spec = tiny_spec(training={"lr": 1e30})  # the teachers keep their sane learning rate
    with pytest.raises(TrainingError) as caught:
        train(spec, tmp_path)
    assert caught.value.code == "diverged"
    assert "student" in caught.value.message and "Traceback" not in caught.value.message
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert set(state["finished"]) == {"teacher:digit-teacher", "teacher:aux-teacher"}
    assert state["current"] is None
    finished = read_finished(tmp_path)
    assert all(torch.isfinite(t).all() for stage in finished.values()
               for t in stage["model"].values())


def test_another_spec_in_the_same_workdir_starts_afresh(tiny_run: tuple[Result, Path], tmp_path: Path):
    with pytest.raises(RuntimeError):
        train(tiny_spec(training={"seed": 7}), tmp_path, callbacks=Recorder(crash_at=("student", 1)))
    recorder = Recorder()
    result = train(tiny_spec(), tmp_path, callbacks=recorder)
    assert recorder.stages[0][0] == "teacher:digit-teacher"
    assert result.results["tasks"] == tiny_run[0].results["tasks"]


class FileWatcher(Recorder):
    """Record the inode of each finished-stage file at every epoch end (a rewrite replaces it)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = workdir
        self.inodes: list[dict[str, int]] = []

    def on_epoch_end(self, **event) -> None:
        super().on_epoch_end(**event)
        self.inodes.append({path.name: path.stat().st_ino
                            for path in (self.workdir / FINISHED_DIR).glob("finished-*.pt")})


def test_finished_stages_are_written_once_in_their_own_files(tmp_path: Path):
    watcher = FileWatcher(tmp_path)
    train(tiny_spec(), tmp_path, callbacks=watcher)
    # The teachers' files exist from the student's first epoch on and are never rewritten.
    student = [inodes for event, inodes in zip(watcher.epochs, watcher.inodes)
               if event["stage"] in ("student", "baseline")]
    teachers = {name: inode for name, inode in student[0].items() if "teacher" in name}
    assert len(teachers) == 2
    assert all({name: inodes[name] for name in teachers} == teachers for inodes in student)
    # checkpoint.pt names the files and holds no finished weights.
    on_disk = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["finished"]
    assert all(set(entry) == {"epochs", "seconds", "steps", "best_epoch", "stopped_early", "file"}
               for entry in on_disk.values())
    assert sorted(path.name for path in (tmp_path / FINISHED_DIR).iterdir()) == sorted(
        entry["file"] for entry in on_disk.values())


def test_a_stale_checkpoint_takes_its_finished_stage_files_with_it(tmp_path: Path):
    with pytest.raises(RuntimeError):
        train(tiny_spec(), tmp_path, callbacks=Recorder(crash_at=("student", 1)))
    assert len(list((tmp_path / FINISHED_DIR).glob("finished-*.pt"))) == 2
    assert load_checkpoint(tmp_path, spec_sha256="another spec") is None
    assert not (tmp_path / FINISHED_DIR).exists()


def test_a_missing_finished_stage_file_starts_afresh(tmp_path: Path):
    with pytest.raises(RuntimeError):
        train(tiny_spec(), tmp_path, callbacks=Recorder(crash_at=("student", 1)))
    next((tmp_path / FINISHED_DIR).glob("finished-teacher_aux*.pt")).unlink()
    assert load_checkpoint(tmp_path, spec_sha256=spec_sha256(tiny_spec())) is None
    recorder = Recorder()
    train(tiny_spec(), tmp_path, callbacks=recorder)
    assert recorder.stages[0][0] == "teacher:digit-teacher"


def test_unavailable_cuda_is_a_training_error(tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError) as caught:
        train(tiny_spec(training={"device": "cuda"}), tmp_path)
    assert caught.value.code == "device_unavailable"


class CountSaves:
    """Wrap CheckpointWriter.submit: record (stage, epoch) of every checkpoint submitted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from app.training.checkpoint import CheckpointWriter

        self.saved: list[tuple[str, int]] = []
        submit = CheckpointWriter.submit

        def counting(writer, state) -> None:  # noqa: ANN001
            current = state["current"]
            self.saved.append((current["stage"], current["epoch"]) if current else ("finished", len(state["finished"])))
            submit(writer, state)

        monkeypatch.setattr(CheckpointWriter, "submit", counting)


def test_a_checkpoint_interval_saves_stage_ends_only_and_changes_no_result(
        tiny_run: tuple[Result, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    uninterrupted, _ = tiny_run
    saves = CountSaves(monkeypatch)
    result = train(tiny_spec(), tmp_path, job_id="job-tiny", checkpoint_interval=3600)
    stages = [stage["name"] for stage in result.results["stages"]]
    assert saves.saved == [("finished", n) for n in range(1, len(stages) + 1)]  # no mid-stage saves
    assert result.results["tasks"] == uninterrupted.results["tasks"]

    saves.saved.clear()
    train(tiny_spec(), tmp_path / "every-epoch", job_id="job-tiny", checkpoint_interval=0)
    assert len(saves.saved) == sum(stage["epochs"] for stage in result.results["stages"])


def test_a_stop_with_unsaved_epochs_finishes_the_epoch_saves_it_and_resumes_exactly(
        tiny_run: tuple[Result, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Cancel / worker shutdown with interval checkpoints still repeats at most the epoch in flight."""
    uninterrupted, _ = tiny_run

    class StopInStudentEpoch2(Recorder):
        stopping = False

        def on_epoch_end(self, **event) -> None:
            super().on_epoch_end(**event)
            self.stopping = self.stopping or (event["stage"], event["epoch"]) == ("student", 1)

        def should_stop(self) -> bool:  # asked from the first step of epoch 2 on
            return self.stopping

    saves = CountSaves(monkeypatch)
    stopper = StopInStudentEpoch2()
    with pytest.raises(TrainingCancelled):
        train(tiny_spec(), tmp_path, callbacks=stopper, job_id="job-tiny", checkpoint_interval=3600)
    # epoch 1 was unsaved, so epoch 2 ran to its end and was saved before the stop
    assert [(e["stage"], e["epoch"]) for e in stopper.epochs if e["stage"] == "student"] == [("student", 1), ("student", 2)]
    assert saves.saved[-1] == ("student", 2)
    assert load_checkpoint(tmp_path, spec_sha256=spec_sha256(tiny_spec()))["current"]["epoch"] == 2

    recorder = Recorder()
    resumed = train(tiny_spec(), tmp_path, callbacks=recorder, job_id="job-tiny", checkpoint_interval=3600)
    assert (recorder.epochs[0]["stage"], recorder.epochs[0]["epoch"]) == ("student", 3)
    assert resumed.results["tasks"] == uninterrupted.results["tasks"]
