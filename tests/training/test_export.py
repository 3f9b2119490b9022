"""Student export: load_student round trip and ONNX parity with PyTorch."""

import json
from pathlib import Path

import numpy as np
import pytest
import onnxruntime as ort
import torch

from app.training.checkpoint import read_finished
from app.training.datasets.registry import load_dataset
from app.training.export import load_student
from app.training.loop import Result
from tests.training.conftest import tiny_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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
    state = read_finished(workdir)["student"]["model"]
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


def test_regression_student_answers_in_original_units(tmp_path) -> None:  # noqa: ANN001
    """Heads train on standardised targets; load_student and ONNX give grams, as the metrics do."""
    import json as _json

    import numpy as np
    import onnxruntime as ort

    from app.training.loop import train
    from app.training.spec import JobSpec

    spec = JobSpec.model_validate(_json.loads((EXAMPLES / "kind-regression-penguins.json").read_text()))
    spec = spec.model_copy(update={"export": ["safetensors", "onnx"]})
    result = train(spec, tmp_path / "work")
    out = tmp_path / "work" / "artifacts"
    student = load_student(out)
    from app.training.datasets.registry import load_dataset

    data = load_dataset(spec.dataset, tasks=spec.tasks)
    preds = student(data.x_test)["body_mass"].squeeze(-1).detach()
    rmse = float(((preds - data.y_test["body_mass"]) ** 2).mean().sqrt())
    assert 2000 < float(preds.mean()) < 7000  # grams, not standard deviations
    assert rmse == pytest.approx(result.results["tasks"]["body_mass"]["student"], rel=1e-3)
    session = ort.InferenceSession(str(out / "student.onnx"))
    onnx_mass = session.run(["body_mass"], {"x": data.x_test.numpy()})[0].squeeze(-1)
    assert np.abs(onnx_mass - preds.numpy()).max() < 1e-2  # grams
    assert {"report.png", "report.html"} <= {p.name for p in result.artifacts}
