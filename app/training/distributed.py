"""Data-parallel ranks for train(): what N processes must share and agree on to train as one.

Every rank runs the same train() (loop.py) with a `Ranks`; world size 1 is the plain single
process and every method here is then a no-op that returns its input. Under N ranks
(torch.distributed, gloo on CPUs, NCCL on GPUs; launch.py starts them):
- batches: the global batch stays `batch_size`; rank r takes rows [r*b, (r+1)*b) of each global
  batch (b = batch_size / N) of the same seeded permutation, so the ranks' rows never overlap and
  their union is the single-process batch. A pass's last, short global batch of m rows is split
  as evenly as it goes, each rank's mean loss weighed by its share (m < N rows: left out).
- gradients: the model is wrapped in DistributedDataParallel (mean of the ranks' gradients, equal
  shard sizes: the gradient of the global batch mean); the feature adaptors and the learned task
  weights (uncertainty, GradNorm) live outside the model's forward, so their gradients are
  all-reduced here after each backward. Every model output joins the loss with weight 0, so each
  parameter gets a gradient every step even when a task has no term on a rank.
- agreement: a stop (cancel, shutdown) is an all-reduce each step, and rank 0's decision to
  checkpoint is broadcast, so every rank leaves the loop at the same step; epoch losses are the
  global sample-weighted means; weighting buffers (DWA loss sums, GradNorm L(0)) and the model's
  buffers are made equal at each epoch end, when checkpoints are written.
- side effects: rank 0 alone writes checkpoints, events, TensorBoard files and artifacts; the
  others get silent callbacks. Rank 0 loads the data and builds the teacher cache first
  (`wait_for_main` / `handoff`); the others then read the same files (the cache memory-mapped), resolved by
  rank 0: a non-zero rank never resolves a file reference itself.
- randomness: dropout, noise and augmentation draw from a per-rank stream reseeded at each
  epoch from (seed, epoch, rank): resuming at an epoch end replays it exactly.
"""

import contextlib
import hashlib
import pickle
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from app.training.callbacks import TrainCallbacks
from app.training.checkpoint import CheckpointWriter
from app.training.files import FileResolver

Tensors = dict[str, torch.Tensor]
HANDOFF_WAIT = timedelta(hours=24)  # the other ranks wait this long for rank 0's data and cache


class RankFailed(RuntimeError):
    """A rank of a data-parallel job died or lost its peers; the job is handed back to the queue."""


class Ranks:
    """This process's place among the job's data-parallel ranks (default: the only one)."""

    def __init__(self, rank: int = 0, world_size: int = 1, *, store: dist.Store | None = None) -> None:
        self.rank, self.world_size, self.store = rank, world_size, store
        self.is_main = rank == 0
        self.rows_trained = 0  # this rank's training rows (throughput)
        self.train_seconds = 0.0
        self._epoch_started = 0.0
        self._paths: dict[str, str] = {}  # file reference -> path, as rank 0 resolved it
        self._last_trained: nn.Module | None = None  # the last stage's model, weighting, adaptors
        self._scales: list[float] = []  # per step of the current pass: this rank's loss weight
        self._params: list[torch.Tensor] = []  # the wrapped model's trainable ones (step_loss)
        self._step = 0

    # -- setup -------------------------------------------------------------------------------

    def callbacks(self, callbacks: TrainCallbacks) -> TrainCallbacks:
        """Return the callbacks this rank calls: the caller's on rank 0, silent ones elsewhere;
        under N ranks `should_stop` is agreed by all."""
        if self.world_size == 1:
            return callbacks
        return _RankCallbacks(callbacks if self.is_main else TrainCallbacks(), self)

    def resolver(self, resolver: FileResolver) -> FileResolver:
        """Return the resolver this rank reads files through (rank 0's paths on the others)."""
        if self.world_size == 1:
            return resolver
        return _RecordingResolver(resolver, self._paths) if self.is_main else _SharedPaths(self._paths)

    def checkpoint_writer(self, workdir: Path) -> contextlib.AbstractContextManager[Any]:
        """Return rank 0's checkpoint writer; a writer that writes nothing on the others."""
        return CheckpointWriter(workdir) if self.is_main else _NoWrites()

    def wait_for_main(self, step: str) -> None:
        """On ranks > 0, wait until rank 0 has called `handoff(step)`: caches and downloads are
        built once, by rank 0, and then read by the others (rank 0 returns at once).

        The wait is on the store, not a collective: rank 0's teacher pass may take longer than a
        collective's timeout. If rank 0 dies meanwhile, the store's connection breaks; if it
        raises, launch.py stops this rank."""
        if self.is_main or self.world_size == 1:
            return
        assert self.store is not None
        self.store.wait([f"handoff/{step}"], HANDOFF_WAIT)
        self._paths.update(pickle.loads(self.store.get(f"handoff/{step}")))

    def handoff(self, step: str) -> None:
        """On rank 0, let the other ranks past `wait_for_main(step)`, with the paths it resolved."""
        if self.is_main and self.world_size > 1:
            assert self.store is not None
            self.store.set(f"handoff/{step}", pickle.dumps(self._paths))

    # -- the step ----------------------------------------------------------------------------

    def local_batch(self, batch_size: int) -> int:
        """Return this rank's share of a global batch (the spec checks that it divides)."""
        return batch_size // self.world_size

    def shard(self, order: torch.Tensor, batch: int) -> torch.Tensor:
        """Return this rank's rows of the permutation `order` (n,), in `batch`-row slices that
        are this rank's part of each global batch of `batch * world_size` rows.

        A short last global batch of m rows is split as evenly as it goes (sizes differ by at
        most one; `step_loss` weighs each rank's mean by its share); with m < world_size it is
        left out (fewer rows than ranks)."""
        if self.world_size == 1:
            return order
        world, full = self.world_size, batch * self.world_size
        whole = len(order) // full * full
        mine = order[:whole].view(-1, world, batch)[:, self.rank].reshape(-1)  # (whole / world,)
        tail = len(order) - whole if len(order) - whole >= world else 0
        sizes = [tail // world + (rank < tail % world) for rank in range(world)]
        start = whole + sum(sizes[:self.rank])
        self._scales = [1.0] * (whole // full) + ([sizes[self.rank] * world / tail] if tail else [])
        self._step = 0
        return torch.cat([mine, order[start:start + sizes[self.rank]]])

    def training_forward(self, staged: nn.Module) -> Callable[..., Any]:
        """Return the training step's forward, (x) -> (logits, taps): DDP-wrapped under N ranks."""
        model = staged.model
        if self.world_size == 1:
            return model.forward_features
        device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
        # Every parameter gets a gradient on every step (step_loss adds each one with weight 0),
        # so DDP need not search the graph for unused ones (find_unused_parameters=True cost a
        # third of a small student's 2-rank stage on the CPU: bench.ddp_overhead).
        self._params = [p for p in model.parameters() if p.requires_grad]
        return DistributedDataParallel(_FeaturesForward(model), device_ids=device_ids,
                                       find_unused_parameters=False)

    def step_loss(self, loss: Any, logits: Tensors, taps: dict[str, Any]) -> Any:
        """Return what this rank backpropagates: under several ranks its mean loss weighed by its
        share of the global batch (1 but in a short last batch), plus every output with weight 0,
        so each parameter gets a gradient on every rank (also where this rank's rows have no term
        for a task, or none at all), plus every trainable parameter with weight 0 (one the forward
        did not use still reaches DDP's reducer, which does not search the graph for them)."""
        if self.world_size == 1:
            return loss
        scale = self._scales[self._step] if self._step < len(self._scales) else 1.0
        self._step += 1
        outputs = [*logits.values(), *(t for t in taps.values() if isinstance(t, torch.Tensor))]
        unused = sum(p.float().sum() for p in self._params)
        return loss * scale + (sum(output.float().sum() for output in outputs) + unused) * 0.0

    def average_grads(self, staged: nn.Module) -> None:
        """Average the gradients of the parameters outside the model (adaptors, task weights)."""
        if self.world_size == 1:
            return
        params = [p for name, p in staged.named_parameters() if not name.startswith("model.")
                  and p.requires_grad]
        if not params:
            return
        flat = torch.cat([torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1),
                                     p.new_full((1,), float(p.grad is not None))]) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            grad, present = flat[offset:offset + p.numel()], flat[offset + p.numel()]
            offset += p.numel() + 1
            if present > 0:  # some rank had a gradient: all step it alike
                p.grad = (grad / self.world_size).view_as(p).clone()

    def agree(self, flag: bool) -> bool:
        """Return rank 0's `flag` on every rank (decisions that read a clock or a database)."""
        if self.world_size == 1:
            return flag
        box = self._on_backend(torch.tensor([float(flag)]))
        dist.broadcast(box, src=0)
        return bool(box.item())

    def any(self, flag: bool) -> bool:
        """Return True on every rank when any rank's `flag` is set."""
        if self.world_size == 1:
            return flag
        box = self._on_backend(torch.tensor([float(flag)]))
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return bool(box.item())

    def _on_backend(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.cuda() if dist.get_backend() == "nccl" else tensor

    # -- epochs ------------------------------------------------------------------------------

    def start_epoch(self, seed: int, epoch: int) -> None:
        """Start an epoch: under N ranks reseed this rank's dropout / noise stream."""
        self._epoch_started = time.perf_counter()
        if self.world_size > 1:
            torch.manual_seed((seed * 1_000_003 + epoch) * 1009 + self.rank)

    def finish_epoch(self, staged: nn.Module, losses: dict[str, float], *, seen: int) -> dict[str, float]:
        """Close an epoch: count throughput; under N ranks return the global mean losses and make
        the weighting's and the model's buffers equal on every rank."""
        self.rows_trained += seen
        self._last_trained = staged
        self.train_seconds += time.perf_counter() - self._epoch_started
        if self.world_size == 1:
            return losses
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, (losses, seen))
        total = sum(count for _, count in gathered)
        names = dict.fromkeys(name for part, _ in gathered for name in part)
        mean = {name: sum(part.get(name, 0.0) * count for part, count in gathered) / max(total, 1)
                for name in names}
        weighting = getattr(staged, "weighting", None)
        for name, buffer in ([] if weighting is None else weighting.named_buffers()):
            if name in ("epoch_sums", "epoch_counts"):  # this epoch's per-rank sums: add them up
                dist.all_reduce(buffer)
            else:
                _broadcast(buffer)
        for buffer in staged.model.buffers():  # e.g. batch-norm statistics: rank 0's
            _broadcast(buffer)
        return mean

    def report(self) -> dict[str, Any]:
        """Return results.json's `world_size` and per-rank throughput (gathered from every rank)."""
        mine = {"rank": self.rank, "rows": self.rows_trained, "seconds": round(self.train_seconds, 3),
                "rows_per_second": round(self.rows_trained / self.train_seconds, 1)
                if self.train_seconds > 0 else None,
                # equal on every rank when their weights (task weights included) stayed in sync
                "params_sha256": None if self._last_trained is None else _digest(self._last_trained)}
        gathered: list[Any] = [mine]
        if self.world_size > 1:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, mine)
        return {"world_size": self.world_size, "ranks": gathered}


def _digest(module: nn.Module) -> str:
    """Return the sha256 of a module's state (parameters and persistent buffers)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _broadcast(buffer: torch.Tensor) -> None:
    """Overwrite `buffer` with rank 0's (bool buffers travel as bytes: gloo has no bool)."""
    if buffer.dtype == torch.bool:
        carrier = buffer.to(torch.uint8)
        dist.broadcast(carrier, src=0)
        buffer.copy_(carrier.bool())
    else:
        dist.broadcast(buffer, src=0)


class _FeaturesForward(nn.Module):
    """The model's training forward as a module's forward, which DDP wraps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model.forward_features(x)


class _RankCallbacks(TrainCallbacks):
    """The rank's callbacks (the caller's on rank 0, no-ops elsewhere); stopping is agreed."""

    def __init__(self, inner: TrainCallbacks, ranks: Ranks) -> None:
        self.inner, self.ranks = inner, ranks

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        self.inner.on_stage_start(stage=stage, epochs=epochs)

    def on_epoch_end(self, **kwargs: Any) -> None:
        self.inner.on_epoch_end(**kwargs)

    def should_stop(self) -> bool:
        return self.ranks.any(self.inner.should_stop())

    def on_note(self, *, message: str) -> None:
        self.inner.on_note(message=message)

    def on_train_end(self, **kwargs: Any) -> None:
        self.inner.on_train_end(**kwargs)


class _RecordingResolver:
    """Rank 0's resolver: resolve as usual and remember each path for the other ranks."""

    def __init__(self, resolver: FileResolver, paths: dict[str, str]) -> None:
        self.inner, self.paths = resolver, paths

    def resolve(self, ref: str) -> Path:
        path = self.inner.resolve(ref)
        self.paths[ref] = str(path)
        return path


class _SharedPaths:
    """A non-zero rank's resolver: the paths rank 0 resolved (and checked)."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def resolve(self, ref: str) -> Path:
        if ref not in self.paths:
            raise RankFailed(f"file {ref!r} was not resolved by rank 0")
        return Path(self.paths[ref])


class _NoWrites(contextlib.AbstractContextManager):
    """The checkpoint writer of a non-zero rank: rank 0 writes."""

    def __exit__(self, *exc: object) -> None:
        """Nothing to wait for."""

    def submit(self, state: dict[str, Any]) -> None:
        """Write nothing."""

    def wait(self) -> None:
        """Nothing is in flight."""
