"""Data placement (device vs DataLoader stream), the background checkpoint writer, targets without copies."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.training.batching import Batches, choose_placement
from app.training.checkpoint import CheckpointWriter, load_checkpoint, new_checkpoint
from app.training.loop import Result, TrainCallbacks, train
from app.training.spec import JobSpec
from app.training.teacher_targets import SoftTargets, ensemble
from app.training.teachers import TeacherOutputs
from tests.training.conftest import tiny_spec, tiny_spec_dict


class Notes(TrainCallbacks):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def on_note(self, *, message: str) -> None:
        self.notes.append(message)


def _same_student(workdir: Path, reference: Path) -> bool:
    got = load_file(workdir / "artifacts" / "student.safetensors")
    want = load_file(reference / "artifacts" / "student.safetensors")
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_auto_keeps_tiny_data_on_the_device(tiny_run: tuple[Result, Path]):
    result, _ = tiny_run
    assert result.results["data_placement"] == {
        "teacher:digit-teacher": "device", "teacher:aux-teacher": "device",
        "student": "device", "baseline": "device"}


@pytest.mark.parametrize("workers", [0, 1])
def test_stream_gives_the_same_weights_and_metrics_as_device(
        tiny_run: tuple[Result, Path], tmp_path: Path, workers: int):
    reference, reference_dir = tiny_run
    notes = Notes()
    spec = tiny_spec(training={"data_placement": "stream", "loader_workers": workers})
    streamed = train(spec, tmp_path, callbacks=notes)
    assert set(streamed.results["data_placement"].values()) == {"stream"}
    assert streamed.results["tasks"] == reference.results["tasks"]
    assert _same_student(tmp_path, reference_dir)
    assert any("stage 'student': data placement 'stream'" in note for note in notes.notes)


def test_auto_streams_memory_mapped_teacher_targets_on_the_cpu():
    placement, why = choose_placement("auto", torch.device("cpu"), nbytes=100 << 20, mapped=True)
    assert placement == "stream" and "memory-mapped" in why
    assert choose_placement("auto", torch.device("cpu"), nbytes=100 << 20, mapped=False)[0] == "device"


def test_both_placements_yield_the_same_batches_and_only_what_the_stage_reads():
    x = torch.arange(10.0).reshape(10, 1)
    soft = SoftTargets(logits={"a": x * 2, "b": x * 3}, features={"t": x.repeat(1, 4)})
    kwargs = dict(x=x, targets={"a": torch.arange(10)}, labelled=None, soft=soft,
                  device=torch.device("cpu"), batch_size=4, soft_tasks={"a"}, features=False)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    device = list(Batches(placement="device", **kwargs).epoch(order))
    stream = list(Batches(placement="stream", **kwargs).epoch(order))
    assert [len(b.x) for b in device] == [4, 4, 2]
    for one, other in zip(device, stream, strict=True):
        assert torch.equal(one.x, other.x) and torch.equal(one.targets["a"], other.targets["a"])
        assert one.soft.logits.keys() == other.soft.logits.keys() == {"a"}
        assert one.soft.features == other.soft.features == {}
        assert torch.equal(one.soft.logits["a"], other.soft.logits["a"])
    assert torch.equal(torch.cat([b.x for b in device])[:, 0], order.float())


def test_one_teacher_targets_are_used_as_they_are():
    spec = JobSpec.model_validate(tiny_spec_dict(teachers=[
        {"name": "all", "tasks": ["digit", "parity", "large"],
         "source": {"train": {"arch": {"type": "mlp", "hidden": [8]}, "epochs": 1}}}]))
    out = TeacherOutputs(logits={"digit": torch.randn(5, 10), "parity": torch.randn(5, 2),
                                 "large": torch.randn(5, 1)}, features=torch.randn(5, 8))
    soft = ensemble(spec, [out])
    assert all(soft.logits[task] is out.logits[task] for task in out.logits)
    assert soft.features["all"] is out.features


def test_the_checkpoint_holds_the_state_as_it_was_at_submit(tmp_path: Path):
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(3)
    optimizer.step()
    state = new_checkpoint(spec_sha256="x")
    state["current"] = {"stage": "student", "epoch": 1, "optimizer": optimizer.state_dict()}
    before = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    with CheckpointWriter(tmp_path) as writer:
        writer.submit(state)
        optimizer.step()  # updates the live moment tensors in place while the write may run
        state["history"].append({"epoch": 2})
    saved = load_checkpoint(tmp_path, spec_sha256="x")  # on disk once the block exits
    assert torch.equal(saved["current"]["optimizer"]["state"][0]["exp_avg"], before)
    assert saved["history"] == []


def test_a_failed_background_write_is_raised_in_the_training_thread(tmp_path: Path):
    writer = CheckpointWriter(tmp_path / "missing")  # no such directory: the write fails
    writer.submit(new_checkpoint(spec_sha256="x"))
    with pytest.raises(FileNotFoundError):
        writer.submit(new_checkpoint(spec_sha256="x"))  # waits for the first, gets its error
    writer.__exit__(None, None, None)


@pytest.mark.slow  # torch.compile's CPU codegen took ~2 min here (gcc, 2 shared cores)
def test_compiled_student_forward_trains(tmp_path: Path):
    """torch.compile on the CPU (needs a C compiler); its kernels may round differently."""
    result = train(tiny_spec(training={"compile": True, "epochs": 1}, baseline=False,
                             export=["safetensors"]), tmp_path)
    assert 0.0 <= result.results["tasks"]["digit"]["student"] <= 1.0
