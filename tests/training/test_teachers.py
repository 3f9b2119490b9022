"""Teacher sources (weights, ONNX, precomputed outputs), the file resolver and the output cache."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from app.training.cache import TeacherOutputCache
from app.training.datasets.registry import load_dataset
from app.training.errors import TrainingError
from app.training.evaluate import predict, task_metrics
from app.training.loop import train
from app.training.models import build_model
from app.training.spec import ArchSpec, OnnxSourceSpec, OutputsSourceSpec, TaskSpec
from app.training.teacher_outputs import as_logits, probability_warning
from app.training.files import LocalFileResolver
from app.training.teachers import (ModelTeacher, OnnxTeacher, PrecomputedTeacher,
                                   TeacherOutputs)
from tests.training.conftest import tiny_spec

FAST = {"epochs": 1, "batch_size": 256, "lr": 0.005, "seed": 0, "device": "cpu"}
TASKS = ["digit", "parity", "large"]


@pytest.fixture(scope="module")
def zoo_teacher() -> nn.Module:
    """A zoo MLP over all three tasks, briefly fitted to the digits so its outputs mean something."""
    spec = tiny_spec()
    data = load_dataset(spec.dataset, tasks=spec.tasks)
    torch.manual_seed(0)
    model = build_model(ArchSpec(trunk=[32]), input_shape=[64], tasks=spec.tasks)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        logits = model(data.x_train)
        loss = (nn.functional.cross_entropy(logits["digit"], data.y_train["digit"])
                + nn.functional.cross_entropy(logits["parity"], data.y_train["parity"])
                + nn.functional.binary_cross_entropy_with_logits(logits["large"][:, 0],
                                                                 data.y_train["large"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def one_teacher(source: dict) -> list[dict]:
    return [{"name": "given", "tasks": TASKS, "source": source}]


def test_weights_teacher_matches_its_model(zoo_teacher, tmp_path: Path):
    save_file(zoo_teacher.state_dict(), str(tmp_path / "t.safetensors"))
    spec = tiny_spec(teachers=one_teacher({"weights": {"file": str(tmp_path / "t.safetensors"),
                                                       "arch": {"trunk": [32]}}}),
                     training=FAST, baseline=False, export=[])
    results = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache").results
    data = load_dataset(spec.dataset, tasks=spec.tasks)
    expected = task_metrics(predict(zoo_teacher, data.x_test), data.y_test, spec.tasks)
    assert {task: entry["teacher"] for task, entry in results["tasks"].items()} == expected
    assert results["params"]["teachers"] == {"given": sum(p.numel() for p in zoo_teacher.parameters())}
    assert [stage["name"] for stage in results["stages"]] == ["student"]


def test_weights_that_do_not_fit_the_arch_are_a_training_error(zoo_teacher, tmp_path: Path):
    save_file(zoo_teacher.state_dict(), str(tmp_path / "t.safetensors"))
    spec = tiny_spec(teachers=one_teacher({"weights": {"file": str(tmp_path / "t.safetensors"),
                                                       "arch": {"trunk": [16]}}}), training=FAST)
    with pytest.raises(TrainingError) as caught:
        train(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    assert caught.value.code == "teacher_mismatch"


def test_a_pickle_is_never_loaded(tmp_path: Path):
    np.savez(tmp_path / "outputs.npz", **{"train.digit": np.array([object()] * 3)})
    spec = tiny_spec(teachers=one_teacher({"outputs": {"file": str(tmp_path / "outputs.npz")}}),
                     training=FAST)
    with pytest.raises(TrainingError) as caught:
        train(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    assert caught.value.code == "teacher_mismatch"


class WithFeatures(nn.Module):
    """Export wrapper: per-task logits, then the trunk features."""

    def __init__(self, model: nn.Module, *, concatenated: bool) -> None:
        super().__init__()
        self.model, self.concatenated = model, concatenated

    def forward(self, x: torch.Tensor):
        logits, taps = self.model.forward_features(x)
        outputs = [logits[task] for task in TASKS]
        if self.concatenated:
            outputs = [torch.cat(outputs, dim=1)]
        return (*outputs, taps["trunk"])


def export_onnx(model: nn.Module, path: Path, *, concatenated: bool) -> None:
    names = ["all"] if concatenated else TASKS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithFeatures(model, concatenated=concatenated), (torch.zeros(2, 64),),
                          str(path), input_names=["pixels"], output_names=[*names, "trunk"],
                          dynamic_axes={name: {0: "n"} for name in ["pixels", *names, "trunk"]},
                          opset_version=17, dynamo=False)


@pytest.mark.parametrize("layout", ["by_task", "concatenated"])
def test_onnx_teacher_gives_the_same_outputs_as_its_torch_model(zoo_teacher, tmp_path: Path, layout):
    export_onnx(zoo_teacher, tmp_path / "t.onnx", concatenated=layout == "concatenated")
    spec = tiny_spec(teachers=one_teacher(
        {"onnx": {"file": str(tmp_path / "t.onnx"), "outputs": layout, "features": "trunk"}}))
    x = load_dataset(spec.dataset, tasks=spec.tasks).x_test
    onnx = OnnxTeacher(spec.teachers[0].source.onnx, tasks=spec.tasks, resolver=LocalFileResolver(),
                       name="given").outputs(x)
    torch_outputs = ModelTeacher(zoo_teacher, arch=ArchSpec(trunk=[32]), tasks=spec.tasks).outputs(x)
    for task in TASKS:
        assert torch.allclose(onnx.logits[task], torch_outputs.logits[task], atol=1e-4)
    assert torch.allclose(onnx.features, torch_outputs.features, atol=1e-4)


def test_onnx_teacher_drives_feature_kd_through_a_resolver(zoo_teacher, tmp_path: Path):
    export_onnx(zoo_teacher, tmp_path / "model-file", concatenated=False)

    class UploadedFiles:
        """Map file ids to stored paths, as the uploads API will."""

        def resolve(self, ref: str) -> Path:
            return {"file_123": tmp_path / "model-file"}[ref]

    spec = tiny_spec(teachers=one_teacher({"onnx": {"file": "file_123", "features": "trunk"}}),
                     distillation={"strategy": "feature_kd"}, training=FAST, baseline=False,
                     export=[])
    result = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache", resolver=UploadedFiles())
    assert result.results["params"]["teachers"]["given"] == sum(
        p.numel() for p in zoo_teacher.parameters())
    assert result.results["latency_us_per_sample"]["teacher"] > 0


def test_precomputed_outputs_are_used_as_given(zoo_teacher, tmp_path: Path):
    spec = tiny_spec()
    data = load_dataset(spec.dataset, tasks=spec.tasks)
    arrays = {}
    for split, x in (("train", data.x_train), ("test", data.x_test)):
        outputs = ModelTeacher(zoo_teacher, arch=ArchSpec(trunk=[32]), tasks=spec.tasks).outputs(x)
        arrays.update({f"{split}.{task}": z.numpy() for task, z in outputs.logits.items()})
        arrays[f"{split}.features"] = outputs.features.numpy()
    np.savez(tmp_path / "outputs.npz", **arrays)
    spec = tiny_spec(teachers=one_teacher({"outputs": {"file": str(tmp_path / "outputs.npz"),
                                                       "features": True}}),
                     distillation={"terms": ["soft", "feature"]}, training=FAST, baseline=False,
                     export=[])
    results = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache").results
    expected = task_metrics(predict(zoo_teacher, data.x_test), data.y_test, spec.tasks)
    assert {task: entry["teacher"] for task, entry in results["tasks"].items()} == expected
    assert results["teacher_cache"] == {"given": "precomputed"}
    assert results["params"]["teachers"] == {"given": None}

    del arrays["test.parity"]
    np.savez(tmp_path / "broken.npz", **arrays)
    broken = tiny_spec(teachers=one_teacher({"outputs": {"file": str(tmp_path / "broken.npz")}}))
    with pytest.raises(TrainingError, match="test.parity"):
        train(broken, tmp_path / "broken", cache_dir=tmp_path / "cache")


def test_a_second_job_reuses_the_cached_teacher_outputs(tmp_path: Path, monkeypatch):
    forwards: list[int] = []
    real = ModelTeacher.outputs

    def counted(self, x):
        forwards.append(len(x))
        return real(self, x)

    monkeypatch.setattr(ModelTeacher, "outputs", counted)
    spec = tiny_spec(training=FAST, baseline=False, export=[])
    first = train(spec, tmp_path / "first", cache_dir=tmp_path / "cache").results
    assert first["teacher_cache"] == {"digit-teacher": "miss", "aux-teacher": "miss"}
    assert len(forwards) == 6  # two teachers x (train, validation, test)
    forwards.clear()
    second = train(spec, tmp_path / "second", cache_dir=tmp_path / "cache").results
    assert forwards == []  # no teacher forward at all
    assert second["teacher_cache"] == {"digit-teacher": "hit", "aux-teacher": "hit"}
    assert second["tasks"] == first["tasks"]


def test_online_kd_runs_the_teachers_every_step(tmp_path: Path, monkeypatch):
    forwards: list[int] = []
    real = ModelTeacher.outputs
    monkeypatch.setattr(ModelTeacher, "outputs", lambda self, x: forwards.append(len(x)) or real(self, x))
    spec = tiny_spec(distillation={"online": True}, training={**FAST, "input_noise": 0.05},
                     baseline=False, export=[])
    train(spec, tmp_path / "job", cache_dir=tmp_path / "cache")
    steps = -(-1347 // 256)
    assert len(forwards) == 4 + 2 * steps  # cached train/test pass + both teachers per step


def test_large_cache_entries_are_memory_mapped(tmp_path: Path):
    cache = TeacherOutputCache(tmp_path, memmap_bytes=0)
    tensors = {"train/logits.digit": torch.randn(50, 10), "test/features": torch.randn(5, 3)}
    cache.put("key", tensors)
    loaded = cache.get("key")
    assert loaded is not None and cache.get("other") is None
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
    assert mapped_file(loaded["train/logits.digit"]).parent == tmp_path / "key"
    small = TeacherOutputCache(tmp_path).get("key")
    assert small is not None and mapped_file(small["train/logits.digit"]) is None


def mapped_file(tensor: torch.Tensor) -> Path | None:
    """Return the file whose memory mapping holds the tensor's data (Linux), else None."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(value, 16) for value in fields[0].split("-"))
        if start <= address < end and len(fields) == 6 and fields[5].startswith("/"):
            return Path(fields[5])
    return None


class Probabilities(nn.Module):
    """Export wrapper: the model's outputs as probabilities (softmax per multiclass task, sigmoid binary)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        logits = self.model(x)
        return (logits["digit"].softmax(dim=1), logits["parity"].softmax(dim=1), logits["large"].sigmoid())


def kd_targets(outputs: TeacherOutputs) -> dict[str, torch.Tensor]:
    """Return what the student is taught: softmax for the multiclass tasks, sigmoid for the binary one."""
    z = outputs.logits
    return {"digit": z["digit"].softmax(dim=1), "parity": z["parity"].softmax(dim=1),
            "large": z["large"].sigmoid()}


def test_probability_outputs_become_the_same_targets_as_logits(zoo_teacher, tmp_path: Path):
    spec = tiny_spec()
    data = load_dataset(spec.dataset, tasks=spec.tasks)
    logits = ModelTeacher(zoo_teacher, arch=ArchSpec(trunk=[32]), tasks=spec.tasks).outputs(data.x_test)
    want = kd_targets(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Probabilities(zoo_teacher), (torch.zeros(2, 64),), str(tmp_path / "p.onnx"),
                          input_names=["pixels"], output_names=TASKS,
                          dynamic_axes={name: {0: "n"} for name in ["pixels", *TASKS]},
                          opset_version=17, dynamo=False)
    source = {"file": str(tmp_path / "p.onnx"), "outputs_are": "probabilities"}
    onnx = OnnxTeacher(OnnxSourceSpec(**source), tasks=spec.tasks, resolver=LocalFileResolver(),
                       name="p").outputs(data.x_test)
    with torch.no_grad():
        probabilities = {split: Probabilities(zoo_teacher)(x) for split, x in
                         (("train", data.x_train), ("test", data.x_test))}
    np.savez(tmp_path / "p.npz", **{f"{split}.{task}": p.numpy() for split, ps in probabilities.items()
                                    for task, p in zip(TASKS, ps)})
    precomputed = PrecomputedTeacher(
        OutputsSourceSpec(file=str(tmp_path / "p.npz"), outputs_are="probabilities"), tasks=spec.tasks,
        rows={"train": len(data.x_train), "test": len(data.x_test)}, resolver=LocalFileResolver(),
        name="p").splits["test"]
    for got in (kd_targets(onnx), kd_targets(precomputed)):
        for task in TASKS:
            assert torch.allclose(got[task], want[task], atol=1e-5), task


def test_as_logits_leaves_logits_and_regression_values_alone():
    tasks = [TaskSpec(name="y", kind="regression"), TaskSpec(name="tags", kind="multilabel", num_classes=3)]
    values = {"y": torch.tensor([[0.2], [0.9]]), "tags": torch.tensor([[0.5, 0.0, 1.0], [0.25, 0.75, 0.5]])}
    assert as_logits(values, tasks, "logits") is values
    converted = as_logits(values, tasks, "probabilities")
    assert torch.equal(converted["y"], values["y"])  # a regression output is a value, not a probability
    assert torch.isfinite(converted["tags"]).all()  # 0 and 1 are clamped, not sent to -inf/inf
    assert torch.allclose(converted["tags"].sigmoid(), values["tags"], atol=1e-6)


def test_probability_warning_fires_for_probabilities_not_for_logits(zoo_teacher):
    spec = tiny_spec()
    x = load_dataset(spec.dataset, tasks=spec.tasks).x_test
    logits = ModelTeacher(zoo_teacher, arch=ArchSpec(trunk=[32]), tasks=spec.tasks).outputs(x)
    assert probability_warning("t", logits, spec.tasks, kind="onnx") is None
    probabilities = TeacherOutputs(logits=kd_targets(logits), features=None)
    message = probability_warning("t", probabilities, spec.tasks, kind="onnx")
    assert message is not None and message.startswith("teacher 't': outputs for task 'digit'")
    assert all(f"task '{task}'" in message for task in TASKS)
    assert "set source.onnx.outputs_are to 'probabilities'" in message
    few = TeacherOutputs(logits={"large": probabilities.logits["large"][:19]}, features=None)
    assert probability_warning("t", few, spec.tasks[2:]) is None  # too few rows to tell a binary column
    regression = TeacherOutputs(logits={"y": torch.rand(100, 1)}, features=None)
    assert probability_warning("t", regression, [TaskSpec(name="y", kind="regression")]) is None
