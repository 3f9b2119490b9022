"""training.precision: fp32, bf16 autocast (CPU too), fp16 with a gradient scaler (CUDA only)."""

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from app.training.errors import TrainingError
from app.training.loop import train
from app.training.precision import (
    StepPrecision,
    check_pool_precision,
    check_precision,
    step_precision,
)
from app.training.preflight import DryRunError, dry_run
from tests.training.conftest import tiny_spec

CPU = torch.device("cpu")


def test_fp32_is_the_default_and_written_back() -> None:
    spec = tiny_spec()
    assert spec.training.precision == "fp32"
    assert spec.model_dump()["training"]["precision"] == "fp32"
    with pytest.raises(ValidationError, match="training.precision"):
        tiny_spec(training={"precision": "fp8"})


def test_each_precision_selects_its_autocast_and_scaler() -> None:
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    fp32, bf16 = step_precision("fp32", CPU), step_precision("bf16", CPU)
    assert not fp32.mixed and fp32.scaler is None and fp32.state_dict() == {}
    assert bf16.mixed and bf16.scaler is None  # bf16 has float32's range: nothing to scale
    with fp32.autocast():
        assert layer(x).dtype == torch.float32
    with bf16.autocast():
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(TrainingError) as refused:
        step_precision("fp16", CPU)
    assert refused.value.code == "precision_unsupported" and "training.precision 'fp16'" in refused.value.message
    check_precision("fp16", torch.device("cuda"))  # allowed where there is CUDA (no device needed to decide)


def test_the_pool_check_knows_where_the_job_would_train(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("fp32", "bf16"):
        check_pool_precision(name, device="auto", accelerator="cpu")
    check_pool_precision("fp16", device="auto", accelerator="cuda")
    with pytest.raises(TrainingError, match="DISTILLERY_WORKER_ACCELERATOR=cpu"):
        check_pool_precision("fp16", device="auto", accelerator="cpu")
    with pytest.raises(TrainingError, match="training.device is 'cpu'"):
        check_pool_precision("fp16", device="cpu", accelerator="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto": this host, as here
    with pytest.raises(TrainingError, match="this host has none"):
        check_pool_precision("fp16", device="auto", accelerator="auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_pool_precision("fp16", device="auto", accelerator="auto")


def _model_and_optimizer(seed: int = 0) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_the_scaled_step_equals_the_plain_step_and_skips_overflow() -> None:
    """The fp16 path's GradScaler, run on the CPU (where torch.amp has one) without autocast: a
    power-of-two scale is undone exactly, so the step must equal the unscaled one; an inf gradient
    must skip the step and halve the scale, as torch.amp's recipe does on CUDA."""
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    plain_model, plain_opt = _model_and_optimizer()
    plain = StepPrecision(name="fp32", device_type="cpu")
    plain.backward(torch.nn.functional.mse_loss(plain_model(x), y))
    plain.step(plain_opt)
    scaled_model, scaled_opt = _model_and_optimizer()
    scaled = StepPrecision(name="fp16", device_type="cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 12))
    loss = torch.nn.functional.mse_loss(scaled_model(x), y)
    scaled.backward(loss)
    assert torch.allclose(scaled_model.weight.grad, plain_model.weight.grad * 2.0 ** 12)  # scaled up
    scaled.step(scaled_opt)
    for p, q in zip(plain_model.parameters(), scaled_model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-7)
    before = [p.detach().clone() for p in scaled_model.parameters()]
    scaled_opt.zero_grad()
    scaled.backward(scaled_model(x).sum() * torch.tensor(float("inf")))  # overflowed gradients
    scaled.step(scaled_opt)
    assert all(torch.equal(p, q) for p, q in zip(before, scaled_model.parameters(), strict=True))
    assert scaled.scaler.get_scale() == 2.0 ** 11
    resumed = StepPrecision(name="fp16", device_type="cpu", scaler=torch.amp.GradScaler("cpu"))
    resumed.load_state_dict(scaled.state_dict())  # the checkpoint keeps the scale
    assert resumed.scaler.get_scale() == 2.0 ** 11


def test_a_bf16_job_trains_on_the_cpu_close_to_fp32(tmp_path: Path) -> None:
    runs = {}
    for name in ("fp32", "bf16"):
        runs[name] = train(tiny_spec(training={"precision": name}), tmp_path / name).results
        assert runs[name]["precision"] == name
    for task, row in runs["fp32"]["tasks"].items():
        other = runs["bf16"]["tasks"][task]
        assert other["student"] != pytest.approx(0.0)
        # bf16 keeps 8 bits of mantissa in the forward: a different run, not a broken one
        assert abs(other["student"] - row["student"]) <= 0.05, (task, row, other)
        assert other["teacher"] == pytest.approx(row["teacher"], abs=0.05)


def test_an_fp16_job_on_the_cpu_fails_before_it_trains(tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as refused:
        train(tiny_spec(training={"precision": "fp16", "device": "cpu"}), tmp_path)
    assert refused.value.code == "precision_unsupported"
    assert not (tmp_path / "artifacts").exists()


def test_the_dry_run_refuses_fp16_on_a_cpu_pool_naming_the_field() -> None:
    spec = tiny_spec(training={"precision": "fp16"})
    with pytest.raises(DryRunError) as refused:
        dry_run(spec, accelerator="cpu")
    assert refused.value.field == "body.training.precision" and refused.value.code == "precision_unsupported"
    assert dry_run(tiny_spec(training={"precision": "bf16"}), accelerator="cpu")["stages"]
