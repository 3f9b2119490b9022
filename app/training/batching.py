"""How a stage's rows reach the model: device-resident index slices, or a DataLoader stream.

Both placements walk the same per-epoch permutation in the same `batch_size` slices, so a seeded
run gives the same batches (and on the CPU the same weights) either way:
    "device"  every training tensor is moved to the training device once; a batch is an index
              gather there (no per-sample work, no copies per step).
    "stream"  the tensors stay on the CPU as they arrived (a memory-mapped cache entry stays
              mapped); a DataLoader gathers each slice (optionally in worker processes) and the
              batch is copied over, from pinned memory and non-blocking on CUDA.
"auto" picks "device" unless the rows do not fit: on CUDA more than half of the free device
memory; on the CPU only when the teacher targets arrived memory-mapped (they are bigger than the
cache's memmap threshold, so copying them into memory is what mapping avoided).
"""

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from app.training.teacher_targets import SoftTargets

Tensors = dict[str, torch.Tensor]
Placement = Literal["device", "stream", "disk"]
CUDA_BUDGET = 0.5  # share of the free device memory the training rows may take under "auto"


@dataclass
class RowBatch:
    """One step's rows, on the training device."""

    x: torch.Tensor  # (batch, *input_shape)
    targets: Tensors  # task -> (batch,) or (batch, labels)
    labelled: torch.Tensor | None  # (batch,) bool; None: every row labelled
    soft: SoftTargets | None  # teacher targets the stage reads (None: it reads none)


def stage_bytes(x: torch.Tensor, targets: Tensors, labelled: torch.Tensor | None,
                soft: SoftTargets | None) -> int:
    """Return the bytes of a stage's training rows (inputs, targets, mask, teacher targets)."""
    tensors = [x, *targets.values(), *([] if labelled is None else [labelled])]
    if soft is not None:
        tensors += [*soft.logits.values(), *soft.features.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def choose_placement(requested: str, device: torch.device, *, nbytes: int,
                     mapped: bool) -> tuple[Placement, str]:
    """Return the placement of a stage's rows and why (the note the job reports)."""
    size = f"{nbytes / 2**20:.1f} MiB of training rows"
    if requested in ("device", "stream", "disk"):
        return requested, f"data placement '{requested}' (as the spec asks; {size})"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = CUDA_BUDGET * free
        if nbytes <= budget:
            return "device", f"data placement auto -> device: {size} fit in half the free GPU memory"
        return "stream", (f"data placement auto -> stream: {size} exceed half the free GPU memory "
                          f"({budget / 2**20:.0f} MiB); batches are copied from pinned CPU memory")
    if mapped:
        return "stream", (f"data placement auto -> stream: {size}, teacher targets memory-mapped "
                          "from the cache stay mapped; batches are gathered by a DataLoader")
    return "device", f"data placement auto -> device: {size} in memory, batches are index slices"


class EpochSlices(Sampler[torch.Tensor]):
    """Yield consecutive `batch_size` slices of the permutation set for the coming epoch."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.order = torch.empty(0, dtype=torch.int64)  # (n,) set before each epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.order), self.batch_size):
            yield self.order[start:start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)


class StageRows(Dataset[dict[str, Any]]):
    """A stage's CPU rows; item = a whole batch, gathered by a tensor of row indices."""

    def __init__(self, x: torch.Tensor, targets: Tensors, labelled: torch.Tensor | None,
                 soft: SoftTargets | None) -> None:
        self.x, self.targets, self.labelled, self.soft = x, targets, labelled, soft

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, rows: torch.Tensor) -> dict[str, Any]:
        soft = self.soft
        return {"x": self.x[rows], "targets": {task: y[rows] for task, y in self.targets.items()},
                "labelled": None if self.labelled is None else self.labelled[rows],
                "logits": None if soft is None else {t: z[rows] for t, z in soft.logits.items()},
                "features": None if soft is None else {n: f[rows] for n, f in soft.features.items()}}


class Batches:
    """A stage's batches under one placement; `epoch(order)` yields them in the order's slices.

    `soft_tasks`/`features` say which teacher targets the stage reads: only those are gathered
    (a stage without feature terms would otherwise copy (batch, width) features every step).
    """

    def __init__(self, *, x: torch.Tensor, targets: Tensors, labelled: torch.Tensor | None,
                 soft: SoftTargets | None, placement: Placement, device: torch.device,
                 batch_size: int, soft_tasks: Collection[str] | None, features: bool,
                 workers: int = 0) -> None:
        if soft is not None and soft_tasks is not None:  # keep only what the stage reads
            soft = SoftTargets(logits={t: z for t, z in soft.logits.items() if t in soft_tasks},
                               features=soft.features if features else {})
        self.placement, self.device, self.batch_size = placement, device, batch_size
        self.rows = len(x)
        if placement == "device":
            self.x = x.to(device)  # (n, *input_shape)
            self.targets = {task: y.to(device) for task, y in targets.items()}
            self.labelled = None if labelled is None else labelled.to(device)
            self.soft = None if soft is None else SoftTargets(
                logits={t: z.to(device) for t, z in soft.logits.items()},
                features={n: f.to(device) for n, f in soft.features.items()})
            return
        self.sampler = EpochSlices(batch_size)
        cuda = device.type == "cuda"
        # batch_size=None: the sampler's slices are the batches, gathered whole by StageRows.
        self.loader = DataLoader(StageRows(x, targets, labelled, soft), sampler=self.sampler,
                                 batch_size=None, num_workers=workers, pin_memory=cuda,
                                 persistent_workers=workers > 0,
                                 # its own generator: an epoch's iterator draws a worker base seed,
                                 # which must not advance the global RNG that dropout and noise use
                                 generator=torch.Generator().manual_seed(0))
        self.has_soft = soft is not None

    def draw_order(self, generator: torch.Generator) -> torch.Tensor:
        """Return the next epoch's permutation of the rows (n,), on the CPU."""
        return torch.randperm(self.rows, generator=generator)

    def epoch(self, order: torch.Tensor) -> Iterator[RowBatch]:
        """Yield the batches of one epoch; `order` (n,) is the epoch's permutation on the CPU."""
        if self.placement == "device":
            order = order.to(self.device)
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]  # (batch,)
                yield RowBatch(x=self.x[rows], targets={t: y[rows] for t, y in self.targets.items()},
                               labelled=None if self.labelled is None else self.labelled[rows],
                               soft=None if self.soft is None else self.soft.rows(rows))
            return
        self.sampler.order = order
        for item in self.loader:
            yield RowBatch(x=self._moved(item["x"]),
                           targets={t: self._moved(y) for t, y in item["targets"].items()},
                           labelled=None if item["labelled"] is None else self._moved(item["labelled"]),
                           soft=SoftTargets(
                               logits={t: self._moved(z) for t, z in item["logits"].items()},
                               features={n: self._moved(f) for n, f in item["features"].items()})
                           if self.has_soft else None)

    def _moved(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=True)
