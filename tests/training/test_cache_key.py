"""The teacher-output cache key: a hit only when nothing that changes a teacher's outputs changed."""

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from app.training import cache
from app.training.cache import TeacherOutputCache, cache_key, tensor_sha256
from app.training.models import build_model
from app.training.spec import ArchSpec, OnnxSourceSpec, TaskSpec
from app.training.teacher_targets import split_outputs
from app.training.files import LocalFileResolver
from app.training.teachers import ModelTeacher, OnnxTeacher
from tests.training.test_teachers import export_onnx

TASKS = [TaskSpec(name="digit", kind="multiclass", num_classes=10),
         TaskSpec(name="parity", kind="multiclass", num_classes=2),
         TaskSpec(name="large", kind="binary")]
ARCH = ArchSpec(trunk=[8])


def tiny_model(arch: ArchSpec = ARCH, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, input_shape=[64], tasks=TASKS).eval()


def key(teacher, x: torch.Tensor) -> str:
    return cache_key(teacher_identity=teacher.identity, inputs_sha256={"train": tensor_sha256(x)})


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny by-task ONNX teacher with a `trunk` features output."""
    path = tmp_path_factory.mktemp("onnx") / "t.onnx"
    export_onnx(tiny_model(), path, concatenated=False)
    return path


def onnx(path: Path, tasks=TASKS, **settings) -> OnnxTeacher:
    return OnnxTeacher(OnnxSourceSpec(file=str(path), **settings), tasks=tasks,
                       resolver=LocalFileResolver(), name="t")


X = torch.randn(30, 64, generator=torch.Generator().manual_seed(1))


def test_the_same_teacher_twice_is_the_same_key(onnx_file: Path, tmp_path: Path):
    assert key(ModelTeacher(tiny_model(), arch=ARCH, tasks=TASKS), X) == key(
        ModelTeacher(tiny_model(), arch=ARCH, tasks=TASKS), X)
    assert key(onnx(onnx_file, features="trunk"), X) == key(onnx(onnx_file, features="trunk"), X)
    shutil.copy(onnx_file, tmp_path / "elsewhere.onnx")  # a path is not content
    assert key(onnx(tmp_path / "elsewhere.onnx"), X) == key(onnx(onnx_file), X)


def test_other_weights_are_another_key():
    model = tiny_model()
    before = key(ModelTeacher(model, arch=ARCH, tasks=TASKS), X)
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    assert key(ModelTeacher(model, arch=ARCH, tasks=TASKS), X) != before


def test_another_architecture_with_the_same_weights_is_another_key():
    model = tiny_model()  # dropout has no weights: only the architecture tells the two apart
    assert key(ModelTeacher(model, arch=ARCH, tasks=TASKS), X) != key(
        ModelTeacher(model, arch=ArchSpec(trunk=[8], dropout=0.1), tasks=TASKS), X)


def test_onnx_output_settings_are_part_of_the_key(onnx_file: Path):
    plain = key(onnx(onnx_file), X)
    assert key(onnx(onnx_file, features="trunk"), X) != plain  # the reported bug: same file, features on
    assert key(onnx(onnx_file, outputs="concatenated"), X) != plain


@pytest.mark.parametrize("tasks", [
    [TASKS[1], TASKS[0], TASKS[2]],  # order: a concatenated output is split in it
    TASKS[:2],  # set
    [TaskSpec(name="digit", kind="multiclass", num_classes=9), *TASKS[1:]],  # num_classes
], ids=["order", "set", "num_classes"])
def test_other_tasks_are_another_key(onnx_file: Path, tasks):
    assert key(onnx(onnx_file, tasks=tasks), X) != key(onnx(onnx_file), X)


def test_other_inputs_are_another_key():
    teacher = ModelTeacher(tiny_model(), arch=ARCH, tasks=TASKS)
    changed = X.clone()
    changed[0, 0] += 1
    assert key(teacher, changed) != key(teacher, X)


def test_another_preprocessing_version_is_another_key(monkeypatch):
    teacher = ModelTeacher(tiny_model(), arch=ARCH, tasks=TASKS)
    before = key(teacher, X)
    monkeypatch.setattr(cache, "PREPROCESSING", cache.PREPROCESSING + "-next")
    assert key(teacher, X) != before


def test_outputs_declared_as_probabilities_are_another_key(onnx_file: Path):
    assert key(onnx(onnx_file, outputs_are="probabilities"), X) != key(onnx(onnx_file), X)
    assert key(onnx(onnx_file, outputs_are="logits"), X) == key(onnx(onnx_file), X)


def test_through_the_cache_a_features_job_misses_a_plain_entry(onnx_file: Path, tmp_path: Path):
    splits = {"train": X, "test": X[:7]}
    store = TeacherOutputCache(tmp_path)
    first, hit = split_outputs(onnx(onnx_file), splits, cache=store)
    assert not hit and first["train"].features is None
    again, hit = split_outputs(onnx(onnx_file), splits, cache=store)
    assert hit and torch.equal(again["train"].logits["digit"], first["train"].logits["digit"])
    featured, hit = split_outputs(onnx(onnx_file, features="trunk"), splits, cache=store)
    assert not hit
    assert featured["train"].features.shape == (30, 8) and featured["test"].features.shape == (7, 8)
