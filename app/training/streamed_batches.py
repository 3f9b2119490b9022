"""Batches of a stage whose rows are on disk (`data_placement: "disk"`): chunk-shuffled epochs.

An epoch visits the row store's chunks (a whole number of batches each) in a seeded random order
and each chunk's rows in a seeded random order; batches run across chunk boundaries, so only an
epoch's last batch is short, as under the other placements. Memory holds one chunk (two with
`loader_workers`, which read the next chunk in other processes while this one trains), whatever
the number of rows. The order is drawn from the stage's generator, which the checkpoint keeps, so
a resumed run repeats the same batches. It is not the row permutation the in-memory placements
use (that would read single rows at random): runs are repeatable, not equal to "device" runs.
"""

import math
from collections.abc import Collection, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from app.training.batching import RowBatch
from app.training.datasets.rowstore import DiskRows
from app.training.streamed_targets import chunk_rows_for
from app.training.teacher_targets import SoftTargets

Tensors = dict[str, torch.Tensor]


class StoreChunks(Dataset[dict[str, torch.Tensor]]):
    """The columns of a stage on disk; item i = chunk i of every column, read from the files."""

    def __init__(self, columns: dict[str, DiskRows], chunk_rows: int) -> None:
        self.columns = {name: column.cpu() for name, column in columns.items()}
        self.chunk_rows = chunk_rows
        self.rows = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return math.ceil(self.rows / self.chunk_rows)

    def __getitem__(self, chunk: int) -> dict[str, torch.Tensor]:
        start = int(chunk) * self.chunk_rows
        stop = min(self.rows, start + self.chunk_rows)
        return {name: column.read(start, stop) for name, column in self.columns.items()}


class DiskBatches:
    """A stage's batches read from row stores; same interface as batching.Batches."""

    placement = "disk"

    def __init__(self, *, x: Any, targets: dict[str, Any], labelled: torch.Tensor | None,
                 soft: SoftTargets | None, placement: str, device: torch.device, batch_size: int,
                 soft_tasks: Collection[str] | None, features: bool, workers: int = 0) -> None:
        if labelled is not None:  # the spec refuses label_fraction < 1 with "disk"
            raise ValueError("a stage on disk trains on every row (no label mask)")
        columns: dict[str, DiskRows] = {"x": x, **{f"y/{t}": y for t, y in targets.items()}}
        if soft is not None:
            columns.update({f"z/{t}": z for t, z in soft.logits.items()  # type: ignore[misc]
                            if soft_tasks is None or t in soft_tasks})
            if features:
                columns.update({f"f/{n}": f for n, f in soft.features.items()})  # type: ignore[misc]
        not_on_disk = [name for name, column in columns.items() if not isinstance(column, DiskRows)]
        if not_on_disk:
            raise TypeError(f"data placement 'disk' needs every training column on disk, not {not_on_disk}")
        self.has_soft, self.device, self.batch_size = soft is not None, device, batch_size
        self.rows = len(x)
        self.chunks = StoreChunks(columns, chunk_rows_for(x, batch_size))
        self.workers = workers

    def draw_order(self, generator: torch.Generator) -> torch.Tensor:
        """Return the epoch's plan (chunks, 2) int64: chunk index and the seed of its row order."""
        chunks = torch.randperm(len(self.chunks), generator=generator)
        seeds = torch.randint(0, 2**62, (len(self.chunks),), generator=generator)
        return torch.stack([chunks, seeds], dim=1)

    def epoch(self, order: torch.Tensor) -> Iterator[RowBatch]:
        """Yield the epoch's batches, chunk by chunk in `order` (see draw_order)."""
        loader = DataLoader(self.chunks, sampler=order[:, 0].tolist(), batch_size=None,
                            num_workers=self.workers, prefetch_factor=1 if self.workers else None,
                            pin_memory=self.device.type == "cuda")
        pending: dict[str, torch.Tensor] | None = None  # rows carried into the next chunk's batches
        for chunk, seed in zip(loader, order[:, 1].tolist(), strict=True):
            rows = torch.randperm(len(chunk["x"]), generator=torch.Generator().manual_seed(seed))
            chunk = {name: column[rows] for name, column in chunk.items()}
            if pending is not None:
                chunk = {name: torch.cat([pending[name], column]) for name, column in chunk.items()}
            full = len(chunk["x"]) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                yield self._batch({name: c[start:start + self.batch_size] for name, c in chunk.items()})
            pending = {name: column[full:] for name, column in chunk.items()} if full < len(chunk["x"]) else None
        if pending is not None:
            yield self._batch(pending)

    def _batch(self, columns: dict[str, torch.Tensor]) -> RowBatch:
        moved = {name: c.to(self.device, non_blocking=True) for name, c in columns.items()}

        def part(prefix: str) -> Tensors:
            return {name.removeprefix(prefix): c for name, c in moved.items() if name.startswith(prefix)}

        return RowBatch(x=moved["x"], targets=part("y/"), labelled=None,
                        soft=SoftTargets(logits=part("z/"), features=part("f/")) if self.has_soft else None)
