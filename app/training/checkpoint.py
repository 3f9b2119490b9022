"""Atomic full-state checkpoints: workdir/checkpoint.pt, replaced each epoch, plus one file per
finished stage in workdir/checkpoint/, written once when the stage finishes (re-serialising a
finished 1.2 MB teacher every epoch cost 3-8 ms per epoch on digits-mt).

The loop serialises each epoch's state synchronously (into memory) and a `CheckpointWriter`
writes, fsyncs and renames it in a background thread, so the next epoch trains meanwhile.

Layout in memory (all torch-serialisable with weights_only=True):
    {"format": 4, "spec_sha256": str, "elapsed": float,
     "finished": {stage: {"model": state_dict, "adaptors": state_dict, "weighting": state_dict,
                          "epochs": int, "seconds": float, "steps": int, "best_epoch": int,
                          "stopped_early": bool}},
     "current": None | {"stage", "epoch", "seconds", "steps", "model", "adaptors", "weighting",
                        "optimizer", "scheduler", "rng": {name: Tensor},
                        "selection": {"best_score", "best_epoch", "stale", "best": weights}},
     "history": [metrics.csv rows so far]}
"adaptors" are the stage's feature-distillation adaptors (empty for stages without them);
"weighting" is the stage's task-weighting state (learned weights, DWA loss history, GradNorm's
initial losses; empty for equal/fixed weighting).
On disk "history" is one JSON string, and a "finished" entry holds its counters and
"file" (its name in workdir/checkpoint/); that file holds {"spec_sha256", "model", "adaptors",
"weighting"}. `load_checkpoint` merges the files back, so callers see the layout above.
"""

import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FINISHED_DIR = "checkpoint"  # workdir/checkpoint/<finished_file_name(stage)>
FORMAT = 5  # 2: stages keep their adaptors; 3: "history" is JSON; 4: finished stages in own files;
# 5: stage step counts, LR schedule, best-epoch and early-stopping state
_WEIGHTS = ("model", "adaptors", "weighting")

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


def finished_file_name(stage: str) -> str:
    """Return a file name for the stage's weights: readable, and distinct for distinct stages
    even where sanitising maps two names to the same text ("a:b" and "a_b")."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stage)
    return f"finished-{safe}-{hashlib.sha256(stage.encode()).hexdigest()[:8]}.pt"


def _finished_weights(state: dict[str, Any], stage: str) -> dict[str, Any]:
    entry = state["finished"][stage]
    return {"spec_sha256": state["spec_sha256"], **{key: entry[key] for key in _WEIGHTS}}


def _on_disk(state: dict[str, Any]) -> dict[str, Any]:
    """Return what checkpoint.pt holds: finished stages by reference (their weights live in their
    own files), the history as one JSON string (pickling thousands of small objects every epoch,
    rows x columns growing with the epochs, cost more than the tensors)."""
    finished = {stage: {**{key: value for key, value in entry.items() if key not in _WEIGHTS},
                        "file": finished_file_name(stage)}
                for stage, entry in state["finished"].items()}
    return {**state, "finished": finished, "history": json.dumps(state["history"])}


def _serialise(obj: dict[str, Any]) -> memoryview:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


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
        self._pending: list[Future[None]] = []  # in submission order
        self._stored: set[str] = set()  # finished stages whose file this writer has queued

    def submit(self, state: dict[str, Any]) -> None:
        """Serialise `state` now (later changes to it are not saved) and queue the write.

        A stage that finished since the last call gets its own file, queued before checkpoint.pt
        (one writer thread: in order), so checkpoint.pt never names a file not yet on disk. After
        a resume each finished stage is written once more: simpler than trusting old files."""
        new = [stage for stage in state["finished"] if stage not in self._stored]
        files = [(_serialise(_finished_weights(state, stage)),
                  self.workdir / FINISHED_DIR / finished_file_name(stage)) for stage in new]
        checkpoint = _serialise(_on_disk(state))
        self.wait()
        if files:
            (self.workdir / FINISHED_DIR).mkdir(exist_ok=True)
            self._pending = [self._executor.submit(_write_atomically, data, path)
                             for data, path in files]
            self._stored.update(new)
        self._pending.append(self._executor.submit(_write_atomically, checkpoint,
                                                   self.workdir / CHECKPOINT_NAME))

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise its error here."""
        pending, self._pending = self._pending, []
        for write in pending:
            write.result()

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
    """Return the saved state of this spec's job in `workdir`, or None to start afresh.

    Starting afresh removes the finished-stage files too, so no stale weights outlive the
    checkpoint that named them."""
    state = _read(workdir, spec_sha256=spec_sha256)
    if state is None:
        shutil.rmtree(workdir / FINISHED_DIR, ignore_errors=True)
    return state


def _read(workdir: Path, *, spec_sha256: str | None) -> dict[str, Any] | None:
    """Read checkpoint.pt and merge its finished stages' files back in; None where there is none,
    or anything is unreadable or belongs to another spec (`spec_sha256` None: whichever spec wrote it)."""
    path = workdir / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != FORMAT or spec_sha256 not in (None, state.get("spec_sha256")):
            log.warning("ignoring checkpoint %s: it belongs to another spec or format", path)
            return None
        finished = {}
        for stage, entry in state["finished"].items():
            weights = torch.load(workdir / FINISHED_DIR / entry["file"], map_location="cpu",
                                 weights_only=True)
            if weights.pop("spec_sha256") != state["spec_sha256"]:
                raise ValueError(f"{entry['file']} belongs to another spec")
            finished[stage] = {**weights, **{k: v for k, v in entry.items() if k != "file"}}
    except Exception as error:  # an unreadable checkpoint only costs the work done so far
        log.warning("ignoring unreadable checkpoint %s: %s", path, error)
        return None
    return {**state, "finished": finished, "history": json.loads(state["history"])}


def read_finished(workdir: Path) -> dict[str, dict[str, Any]]:
    """Return the finished stages' entries (weights, epochs, seconds) saved in `workdir`, for
    tools and tests that inspect a job's trained weights; {} when there is no readable state."""
    state = _read(workdir, spec_sha256=None)
    return state["finished"] if state else {}


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
