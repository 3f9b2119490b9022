"""The training step's precision (`training.precision`): fp32; bf16 autocast (CPU or CUDA); fp16
autocast with a gradient scaler (CUDA only).

Only the training step's forward runs under autocast; the losses are computed on float32 logits,
and evaluation, teacher outputs and exports stay in float32 whatever the precision.
"""

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from app.training.errors import TrainingError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, device: torch.device, *, where: str = "") -> None:
    """Refuse a precision the training device cannot run (fp16 needs CUDA)."""
    if name == "fp16" and device.type != "cuda":
        raise TrainingError(code="precision_unsupported", message=(
            "training.precision 'fp16' needs a CUDA device (half-precision kernels and a gradient "
            f"scaler); this job would train on the CPU{where}: use 'bf16' (also on the CPU) or 'fp32'"))


def check_pool_precision(name: str, *, device: str, accelerator: str) -> None:
    """Refuse a precision the workers cannot run, before the job is queued (the API's dry run).

    ``device`` is the spec's training.device; ``accelerator`` what the workers have ("cpu",
    "cuda", or "auto": the same as this host, as in the embedded deployment).
    """
    cuda = accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available())
    if device == "cpu" or not cuda:
        why = (" (training.device is 'cpu')" if device == "cpu" else
               " (the worker pool has no CUDA device: DISTILLERY_WORKER_ACCELERATOR="
               f"{accelerator}{', and this host has none' if accelerator == 'auto' else ''})")
        check_precision(name, torch.device("cpu"), where=why)


@dataclass
class StepPrecision:
    """Autocast for the step's forward, and for fp16 the GradScaler around backward and step."""

    name: str  # "fp32" | "bf16" | "fp16"
    device_type: str  # "cpu" | "cuda"
    scaler: torch.amp.GradScaler | None = None  # fp16 only

    @property
    def mixed(self) -> bool:
        """The forward's outputs come out in a low-precision dtype (cast them to float32)."""
        return self.name in AUTOCAST_DTYPES

    def autocast(self) -> AbstractContextManager[Any]:
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES[self.name])

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (fp16: scaled up, so small gradients do not underflow)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Step the optimiser (fp16: on unscaled gradients, skipped when one is inf/NaN, and the
        scale halved then, grown after a run of good steps: torch.amp's recipe)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (its scale and growth counter), for the checkpoint; {} without one."""
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def step_precision(name: str, device: torch.device) -> StepPrecision:
    """Return the step precision a stage trains with on ``device`` (a fresh scaler for fp16)."""
    check_precision(name, device)
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return StepPrecision(name=name, device_type=device.type, scaler=scaler)
