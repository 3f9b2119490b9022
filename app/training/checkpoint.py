"""Atomic full-state checkpoints: one plain dict in workdir/checkpoint.pt, replaced each epoch.

Layout (all torch-serialisable with weights_only=True):
    {"format": 1, "spec_sha256": str, "elapsed": float,
     "finished": {stage: {"model": state_dict, "adaptors": state_dict, "weighting": state_dict,
                          "epochs": int, "seconds": float}},
     "current": None | {"stage", "epoch", "seconds", "model", "adaptors", "weighting",
                        "optimizer", "rng": {name: Tensor}},
"adaptors" are the stage's feature-distillation adaptors (empty for stages without them);
"weighting" is the stage's task-weighting state (learned weights, DWA loss history, GradNorm's
initial losses; empty for equal/fixed weighting).
     "history": [metrics.csv rows so far]}
"""

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 2  # 2: stages also keep their feature adaptors

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it over `path` only if the block succeeds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def new_checkpoint(*, spec_sha256: str) -> dict[str, Any]:
    """Return the state of a job that has not trained anything yet."""
    return {"format": FORMAT, "spec_sha256": spec_sha256, "elapsed": 0.0,
            "finished": {}, "current": None, "history": []}


def save_checkpoint(state: dict[str, Any], workdir: Path) -> None:
    """Write the checkpoint atomically: a reader sees the old or the new file, never half."""
    with atomic_path(workdir / CHECKPOINT_NAME) as tmp:
        torch.save(state, tmp)


def load_checkpoint(workdir: Path, *, spec_sha256: str) -> dict[str, Any] | None:
    """Return the saved state of this spec's job in `workdir`, or None to start afresh."""
    path = workdir / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an unreadable checkpoint only costs the work done so far
        log.warning("ignoring unreadable checkpoint %s: %s", path, error)
        return None
    if state.get("format") != FORMAT or state.get("spec_sha256") != spec_sha256:
        log.warning("ignoring checkpoint %s: it belongs to another spec or format", path)
        return None
    return state


def capture_rng(batches: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """Return every RNG state that training consumes (init/dropout and batch order)."""
    rng = {"cpu": torch.get_rng_state(), "batches": batches.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict[str, torch.Tensor], batches: torch.Generator, device: torch.device) -> None:
    """Put back the RNG states captured by capture_rng."""
    torch.set_rng_state(rng["cpu"])
    batches.set_state(rng["batches"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
