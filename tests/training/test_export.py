"""Student export: load_student round trip and ONNX parity with PyTorch."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from app.training.datasets.registry import load_dataset
from app.training.export import load_student
from app.training.loop import Result
from tests.training.conftest import tiny_spec


def test_student_json_describes_the_model(tiny_run: tuple[Result, Path]):
    _, workdir = tiny_run
    config = json.loads((workdir / "artifacts" / "student.json").read_text())
    assert config["format_version"] == 1
    assert config["input_shape"] == [64]
    assert config["arch"] == {"type": "mlp", "trunk": [16], "head": [8], "dropout": 0.1}
    assert [task["name"] for task in config["tasks"]] == ["digit", "parity", "large"]
    assert config["onnx"] == {"input": "x", "outputs": ["digit", "parity", "large"]}


def test_load_student_round_trip_gives_identical_outputs(tiny_run: tuple[Result, Path]):
    _, workdir = tiny_run
    first = load_student(workdir / "artifacts")
    second = load_student(workdir / "artifacts")
    assert not first.training
    x = torch.rand(7, 64)
    with torch.no_grad():
        a, b = first(x), second(x)
    assert all(torch.equal(a[task], b[task]) for task in a)
    state = torch.load(workdir / "checkpoint.pt", weights_only=True)["finished"]["student"]["model"]
    assert all(torch.equal(first.state_dict()[name], tensor) for name, tensor in state.items())


def test_onnx_matches_pytorch_on_the_test_split(tiny_run: tuple[Result, Path]):
    _, workdir = tiny_run
    spec = tiny_spec()
    x_test = load_dataset(spec.dataset, tasks=spec.tasks).x_test  # (450, 64)
    model = load_student(workdir / "artifacts")
    with torch.no_grad():
        expected = model(x_test)
    session = ort.InferenceSession(str(workdir / "artifacts" / "student.onnx"))
    assert [output.name for output in session.get_outputs()] == ["digit", "parity", "large"]
    for rows in (x_test, x_test[:1]):  # the batch axis is dynamic
        outputs = session.run(None, {"x": rows.numpy()})
        for name, got in zip(["digit", "parity", "large"], outputs, strict=True):
            want = expected[name][: len(rows)].numpy()
            assert got.shape == want.shape
            assert np.abs(got - want).max() <= 1e-4
