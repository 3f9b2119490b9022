"""Atomic full-state checkpoints: one plain dict in workdir/checkpoint.pt, replaced each epoch.

The loop serialises each epoch's state synchronously (into memory) and a `CheckpointWriter`
writes, fsyncs and renames it in a background thread, so the next epoch trains meanwhile.

Layout (all torch-serialisable with weights_only=True):
    {"format": 3, "spec_sha256": str, "elapsed": float,
     "finished": {stage: {"model": state_dict, "adaptors": state_dict, "weighting": state_dict,
                          "epochs": int, "seconds": float}},
     "current": None | {"stage", "epoch", "seconds", "model", "adaptors", "weighting",
                        "optimizer", "rng": {name: Tensor}},
"adaptors" are the stage's feature-distillation adaptors (empty for stages without them);
"weighting" is the stage's task-weighting state (learned weights, DWA loss history, GradNorm's
initial losses; empty for equal/fixed weighting).
     "history": JSON text of [metrics.csv rows so far] (a list again once loaded)}
"""

import io
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 3  # 2: stages also keep their feature adaptors; 3: "history" is a JSON string

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


def _write_atomically(data: memoryview, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_checkpoint(state: dict[str, Any], workdir: Path) -> None:
    """Write the checkpoint atomically: a reader sees the old or the new file, never half."""
    with atomic_path(workdir / CHECKPOINT_NAME) as tmp:
        torch.save(_on_disk(state), tmp)


def _on_disk(state: dict[str, Any]) -> dict[str, Any]:
    """Return the state with its history as one JSON string: pickling thousands of small
    objects every epoch (rows x columns, growing with the epochs) cost more than the tensors."""
    return {**state, "history": json.dumps(state["history"])}


class CheckpointWriter:
    """Serialise each epoch's state in the caller's thread; write it to disk in a background one.

    `torch.save` into memory takes a few ms and holds the GIL, so it runs where it cannot stall
    the training thread (measured: in a writer thread it did, through GIL hand-offs); the file
    write, fsync and rename release the GIL and run in the background. `submit` waits for the
    previous write first (writes land in order, at most one in flight) and re-raises its error in
    the caller's thread; `wait` runs at stage end and when the block exits, normally or by an
    exception, so the last state is on disk.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future[None] | None = None

    def submit(self, state: dict[str, Any]) -> None:
        """Serialise `state` now (later changes to it are not saved) and queue the write."""
        buffer = io.BytesIO()
        torch.save(_on_disk(state), buffer)
        self.wait()
        self._pending = self._executor.submit(_write_atomically, buffer.getbuffer(),
                                              self.workdir / CHECKPOINT_NAME)

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise its error here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if error is None:
                self.wait()
            else:  # the block's error wins; a failed write only costs the last epoch
                try:
                    self.wait()
                except Exception as write_error:
                    log.warning("checkpoint write failed while handling %r: %s", error, write_error)
        finally:
            self._executor.shutdown(wait=True)


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
    return {**state, "history": json.loads(state["history"])}


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
