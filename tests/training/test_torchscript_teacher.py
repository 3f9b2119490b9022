"""TorchScript teachers: only where the caller allows them, dict or concatenated outputs, through training."""

import io
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from app.files.checks import check_content
from app.files.uploads import BadUpload
from app.training.datasets.registry import load_dataset
from app.training.errors import TrainingError
from app.training.loop import train
from app.training.files import LocalFileResolver
from app.training.teachers import TorchScriptTeacher
from tests.training.conftest import tiny_spec

FAST = {"epochs": 1, "batch_size": 256, "lr": 0.005, "seed": 0, "device": "cpu"}
TASKS = ["digit", "parity", "large"]


class ByTask(nn.Module):
    """A tiny three-task teacher returning a dict keyed by task, plus its trunk features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
        self.digit, self.parity, self.large = nn.Linear(16, 10), nn.Linear(16, 2), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x.flatten(1))  # (batch, 16)
        return {"digit": self.digit(h), "parity": self.parity(h), "large": self.large(h), "trunk": h}


class Concatenated(nn.Module):
    """The same teacher giving one (batch, 13) tensor: digit | parity | large."""

    def __init__(self, inner: ByTask) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return torch.cat([out["digit"], out["parity"], out["large"]], dim=1)


def one_teacher(source: dict) -> list[dict]:
    return [{"name": "given", "tasks": TASKS, "source": source}]


def test_scripted_dict_and_traced_tensor_give_the_eager_outputs(tmp_path: Path) -> None:
    eager = ByTask().eval()
    torch.jit.save(torch.jit.script(eager), str(tmp_path / "dict.pt"))
    torch.jit.save(torch.jit.trace(Concatenated(eager), torch.zeros(2, 64)), str(tmp_path / "cat.pt"))
    spec = tiny_spec(teachers=one_teacher({"torchscript": {"file": str(tmp_path / "dict.pt"), "features": "trunk"}}))
    x = load_dataset(spec.dataset, tasks=spec.tasks).x_test  # (n, 64)
    with torch.no_grad():
        want = eager(x)
    allowed = LocalFileResolver()
    by_task = TorchScriptTeacher(spec.teachers[0].source.torchscript, tasks=spec.tasks, resolver=allowed,
                                 name="given", allowed=True)
    got = by_task.outputs(x)
    assert by_task.params == sum(p.numel() for p in eager.parameters())
    assert torch.allclose(got.features, want["trunk"], atol=1e-6)
    cat_spec = tiny_spec(teachers=one_teacher({"torchscript": {"file": str(tmp_path / "cat.pt")}}))
    cat = TorchScriptTeacher(cat_spec.teachers[0].source.torchscript, tasks=spec.tasks, resolver=allowed,
                             name="given", allowed=True).outputs(x)
    assert cat.features is None
    for task in TASKS:
        assert torch.allclose(got.logits[task], want[task], atol=1e-6)
        assert torch.allclose(cat.logits[task], want[task], atol=1e-5)


def test_not_allowed_is_refused_before_the_file_is_loaded(tmp_path: Path) -> None:
    spec = tiny_spec(teachers=one_teacher({"torchscript": {"file": str(tmp_path / "never-read.pt")}}))
    with pytest.raises(TrainingError) as err:  # the file does not exist: loading was not even tried
        TorchScriptTeacher(spec.teachers[0].source.torchscript, tasks=spec.tasks, resolver=LocalFileResolver(),
                           name="given", allowed=False)
    assert err.value.code == "torchscript_disabled" and "DISTILLERY_ALLOW_TORCHSCRIPT" in err.value.message
    # the permission is train()'s own argument, off by default
    torch.jit.save(torch.jit.script(ByTask()), str(tmp_path / "t.pt"))
    job = tiny_spec(teachers=one_teacher({"torchscript": {"file": str(tmp_path / "t.pt")}}), training=FAST,
                    baseline=False, export=[])
    with pytest.raises(TrainingError) as err:
        train(job, tmp_path / "job", cache_dir=tmp_path / "cache", resolver=LocalFileResolver())
    assert err.value.code == "torchscript_disabled"


def test_a_torchscript_teacher_distills_a_student(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(ByTask().eval()), str(tmp_path / "t.pt"))
    spec = tiny_spec(teachers=one_teacher({"torchscript": {"file": "t.pt", "features": "trunk"}}),
                     distillation={"strategy": "feature_kd"}, training=FAST, baseline=False, export=["safetensors"])
    result = train(spec, tmp_path / "job", cache_dir=tmp_path / "cache",
                   resolver=LocalFileResolver(tmp_path), allow_torchscript=True)
    assert result.results["params"]["teachers"]["given"] == sum(p.numel() for p in ByTask().parameters())
    assert (tmp_path / "job" / "artifacts" / "student.safetensors").stat().st_size > 0
    assert set(result.results["tasks"]) == set(TASKS)


def test_upload_check_accepts_a_torchscript_archive_and_refuses_checkpoints(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(ByTask()), str(tmp_path / "t.pt"))
    meta = check_content(path=tmp_path / "t.pt", purpose="teacher_torchscript", filename="t.pt")
    assert meta["format"] == "torchscript" and meta["code_files"]
    torch.save(ByTask().state_dict(), tmp_path / "ckpt.pt")  # a zip with data.pkl but no code/: a pickle
    with pytest.raises(BadUpload, match="pickle"):
        check_content(path=tmp_path / "ckpt.pt", purpose="teacher_torchscript", filename="ckpt.pt")
    torch.save(ByTask().state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(BadUpload, match="pickle"):
        check_content(path=tmp_path / "old.pt", purpose="teacher_torchscript", filename="old.pt")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("m/code/__torch__.py", "x = 1")
        archive.writestr("m/data.pkl", b"\x80\x02N.")
    (tmp_path / "half.pt").write_bytes(buffer.getvalue())  # no constants.pkl: not what torch.jit.save writes
    with pytest.raises(BadUpload, match="not a TorchScript archive"):
        check_content(path=tmp_path / "half.pt", purpose="teacher_torchscript", filename="half.pt")


class AsProbabilities(nn.Module):
    """The same teacher answering probabilities: softmax for digit and parity, sigmoid for large."""

    def __init__(self, inner: ByTask) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.inner(x)
        return {"digit": out["digit"].softmax(dim=1), "parity": out["parity"].softmax(dim=1),
                "large": out["large"].sigmoid()}


def test_declared_probabilities_give_the_logits_teachers_targets(tmp_path: Path) -> None:
    eager = ByTask().eval()
    torch.jit.save(torch.jit.script(AsProbabilities(eager)), str(tmp_path / "p.pt"))
    spec = tiny_spec(teachers=one_teacher({"torchscript": {"file": str(tmp_path / "p.pt"),
                                                           "outputs_are": "probabilities"}}))
    x = load_dataset(spec.dataset, tasks=spec.tasks).x_test  # (n, 64)
    got = TorchScriptTeacher(spec.teachers[0].source.torchscript, tasks=spec.tasks,
                             resolver=LocalFileResolver(), name="given",
                             allowed=True).outputs(x)
    with torch.no_grad():
        want = eager(x)
    for task in ("digit", "parity"):  # log-probabilities: the same softmax as the logits
        assert torch.allclose(got.logits[task].softmax(dim=1), want[task].softmax(dim=1), atol=1e-5)
    assert torch.allclose(got.logits["large"], want["large"], atol=1e-3)  # logit(sigmoid(z)) == z
