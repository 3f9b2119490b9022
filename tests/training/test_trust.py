"""The engine's trust bugs, each end to end through train(): the same job cached and online, a
features job after a plain one in the same cache, ensembles by probabilities, and diagnostics."""

import json
from pathlib import Path

import pytest
import torch

from app.training.loop import train
from app.training.spec import JobSpec
from app.training.teacher_targets import ensemble
from app.training.teachers import TeacherOutputs
from tests.training.conftest import EXAMPLES, tiny_spec
from tests.training.test_teachers import TASKS, export_onnx, one_teacher, zoo_teacher  # noqa: F401

FAST = {"epochs": 2, "batch_size": 256, "lr": 0.005, "seed": 0, "device": "cpu"}


def penguins_onnx_job(tmp_path: Path, teacher_file: Path, *, online: bool) -> JobSpec:
    spec = json.loads((EXAMPLES / "kind-regression-penguins.json").read_text())
    spec["teachers"] = [{"name": "file", "tasks": ["body_mass", "species"],
                         "source": {"onnx": {"file": str(teacher_file)}}}]
    spec["training"] = {**spec["training"], "epochs": 15, "device": "cpu"}
    spec["distillation"]["online"] = online
    spec["export"] = []
    return JobSpec.model_validate(spec)


def test_a_file_teacher_on_a_regression_task_gives_the_same_student_cached_and_online(tmp_path):
    """The online path used to feed the student grams where the cached path fed standard units."""
    source = json.loads((EXAMPLES / "kind-regression-penguins.json").read_text())
    source["training"] = {**source["training"], "epochs": 10, "device": "cpu"}
    source["teachers"][0]["source"]["train"]["epochs"] = 10
    source["baseline"], source["export"] = False, ["onnx"]
    train(JobSpec.model_validate(source), tmp_path / "source")
    onnx = tmp_path / "source" / "artifacts" / "student.onnx"  # answers in grams
    rmse = {}
    for online in (False, True):
        results = train(penguins_onnx_job(tmp_path, onnx, online=online),
                        tmp_path / f"job-{online}", cache_dir=tmp_path / "cache").results
        rmse[online] = results["tasks"]["body_mass"]["student"]
    assert rmse[True] == pytest.approx(rmse[False], rel=0.01)
    assert rmse[False] < 1000  # grams; a student fed grams as standard units is off by 10^5


def test_a_features_job_after_a_plain_one_misses_the_cache_and_trains_its_feature_term(
        zoo_teacher, tmp_path: Path):  # noqa: F811
    export_onnx(zoo_teacher, tmp_path / "t.onnx", concatenated=False)
    plain = tiny_spec(teachers=one_teacher({"onnx": {"file": str(tmp_path / "t.onnx")}}),
                      training=FAST, baseline=False, export=[])
    first = train(plain, tmp_path / "plain", cache_dir=tmp_path / "cache").results
    assert first["teacher_cache"] == {"given": "miss"}
    features = tiny_spec(teachers=one_teacher({"onnx": {"file": str(tmp_path / "t.onnx"),
                                                        "features": "trunk"}}),
                         distillation={"strategy": "feature_kd"}, training=FAST, baseline=False,
                         export=[])
    second = train(features, tmp_path / "features", cache_dir=tmp_path / "cache").results
    assert second["teacher_cache"] == {"given": "miss"}
    header = (tmp_path / "features" / "artifacts" / "metrics.csv").read_text().splitlines()[0]
    assert "loss.feature.given" in header.split(",")


def two_teacher_spec(weights: tuple[float, float] = (1.0, 1.0), *, temperature: float = 2.0) -> JobSpec:
    teachers = [{"name": name, "tasks": TASKS, "weight": weight,
                 "source": {"onnx": {"file": f"{name}.onnx"}}}
                for name, weight in zip(("a", "b"), weights)]
    return tiny_spec(teachers=teachers, distillation={"temperature": temperature})


def outputs(seed: int, scale: float) -> TeacherOutputs:
    g = torch.Generator().manual_seed(seed)
    return TeacherOutputs(logits={"digit": scale * torch.randn(6, 10, generator=g),
                                  "parity": scale * torch.randn(6, 2, generator=g),
                                  "large": scale * torch.randn(6, 1, generator=g)}, features=None)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (3.0, 1.0)])
def test_an_ensemble_mixes_tempered_probabilities_not_logits(weights):
    spec, T = two_teacher_spec(weights), 2.0
    a, b = outputs(0, 1.0), outputs(1, 20.0)  # logits of very different scales
    wa, wb = weights[0] / sum(weights), weights[1] / sum(weights)
    soft = ensemble(spec, [a, b])
    mixture = wa * torch.softmax(a.logits["digit"] / T, -1) + wb * torch.softmax(b.logits["digit"] / T, -1)
    assert torch.allclose(torch.softmax(soft.logits["digit"] / T, -1), mixture, atol=1e-6)
    q = wa * torch.sigmoid(a.logits["large"] / T) + wb * torch.sigmoid(b.logits["large"] / T)
    assert torch.allclose(torch.sigmoid(soft.logits["large"] / T), q, atol=1e-6)
    averaged_logits = wa * a.logits["digit"] + wb * b.logits["digit"]  # what it used to be
    assert not torch.allclose(soft.logits["digit"], averaged_logits, atol=1e-2)


def test_an_ensemble_of_regression_teachers_is_the_weighted_mean():
    data = json.loads((EXAMPLES / "kind-regression-penguins.json").read_text())
    data["teachers"] = [{"name": n, "tasks": ["body_mass", "species"], "weight": w,
                         "source": {"onnx": {"file": "t.onnx"}}} for n, w in (("a", 1.0), ("b", 3.0))]
    spec = JobSpec.model_validate(data)
    a = TeacherOutputs(logits={"body_mass": torch.tensor([[1.0], [2.0]]),
                               "species": torch.zeros(2, 3)}, features=None)
    b = TeacherOutputs(logits={"body_mass": torch.tensor([[3.0], [-2.0]]),
                               "species": torch.zeros(2, 3)}, features=None)
    soft = ensemble(spec, [a, b])
    assert torch.allclose(soft.logits["body_mass"], torch.tensor([[2.5], [-1.0]]))


def test_a_teacher_worse_than_the_baseline_is_diagnosed(tmp_path: Path):
    weak = {"train": {"arch": {"type": "mlp", "hidden": [4]}, "epochs": 1, "lr": 1e-4}}
    spec = tiny_spec(teachers=[{"name": "weak", "tasks": TASKS, "source": weak}],
                     training={"epochs": 6, "lr": 0.01}, export=[])
    results = train(spec, tmp_path / "job").results
    worse = [t for t, e in results["tasks"].items() if e["teacher"] < e["baseline"]]
    assert worse
    for task in worse:
        assert any(d.startswith(f"KD cannot help task {task}: teacher accuracy")
                   for d in results["diagnostics"])
    report = (tmp_path / "job" / "artifacts" / "report.html").read_text()
    assert "KD cannot help task" in report


def test_probabilities_passed_as_logits_are_a_diagnostic(tmp_path: Path):
    import numpy as np

    g = torch.Generator().manual_seed(0)
    arrays = {}
    for split, rows in (("train", 1347), ("test", 450)):  # the built-in's own train/test rows
        arrays[f"{split}.digit"] = torch.softmax(torch.randn(rows, 10, generator=g), -1).numpy()
        arrays[f"{split}.parity"] = torch.softmax(torch.randn(rows, 2, generator=g), -1).numpy()
        arrays[f"{split}.large"] = torch.randn(rows, 1, generator=g).numpy()  # real logits
    np.savez(tmp_path / "outputs.npz", **arrays)
    spec = tiny_spec(teachers=one_teacher({"outputs": {"file": str(tmp_path / "outputs.npz")}}),
                     training=FAST, baseline=False, export=[])
    diagnostics = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache").results["diagnostics"]
    warned = [d for d in diagnostics if "look like probabilities" in d]
    assert len(warned) == 1 and "task 'digit'" in warned[0] and "task 'parity'" in warned[0]
    assert "'large'" not in warned[0] and "source.outputs.outputs_are" in warned[0]
