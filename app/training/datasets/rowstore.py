"""Row stores: arrays of a dataset larger than memory, in raw files on disk, read by row ranges.

A store is a directory: one raw file per column (`<index>.bin`, C order, rows first) and
`meta.json` (names, dtypes, row shapes, row count, the sha256 of each column's bytes). Nothing
maps a whole file: `DiskRows` reads `[start:stop]` with one positioned read, so the address space
and the resident memory of a reader grow with the chunk it asks for, never with the file.
"""

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

META = "meta.json"


class DiskRows:
    """A (n, *row_shape) column of a row store; `rows[a:b]` reads those rows as a tensor.

    Duck-types the few tensor operations the engine applies to a split's rows: `len`, `shape`,
    `numel`, `element_size`, slicing with step 1, `.to(device)` (slices then arrive there) and
    `(rows - mean) / std` (recorded, applied to every read; regression targets are standardised so).
    """

    def __init__(self, path: Path, *, dtype: str, shape: tuple[int, ...], sha256: str = "",
                 device: torch.device | None = None,
                 ops: tuple[tuple[str, float], ...] = ()) -> None:
        self.path, self.np_dtype, self.sha256 = Path(path), np.dtype(dtype), sha256
        self._shape = tuple(int(s) for s in shape)
        self.device = device or torch.device("cpu")
        self.ops = ops

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._shape)

    @property
    def dtype(self) -> torch.dtype:
        return torch.from_numpy(np.empty(0, dtype=self.np_dtype)).dtype

    def __len__(self) -> int:
        return self._shape[0]

    def dim(self) -> int:
        return len(self._shape)

    def numel(self) -> int:
        return math.prod(self._shape)

    def element_size(self) -> int:
        return self.np_dtype.itemsize

    def _with(self, **changes: Any) -> "DiskRows":
        fields = {"dtype": self.np_dtype.str, "shape": self._shape, "sha256": self.sha256,
                  "device": self.device, "ops": self.ops, **changes}
        return DiskRows(self.path, **fields)

    def to(self, device: torch.device | str) -> "DiskRows":
        return self._with(device=torch.device(device))

    def cpu(self) -> "DiskRows":
        return self.to("cpu")

    def __sub__(self, value: float) -> "DiskRows":
        return self._with(ops=(*self.ops, ("sub", float(value))))

    def __truediv__(self, value: float) -> "DiskRows":
        return self._with(ops=(*self.ops, ("div", float(value))))

    def __getitem__(self, index: slice) -> torch.Tensor:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("DiskRows reads contiguous row ranges only (rows[a:b])")
        start, stop, _ = index.indices(len(self))
        return self.read(start, max(start, stop))

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Return rows [start, stop) as a tensor on this column's device."""
        per_row = math.prod(self._shape[1:])
        count = (stop - start) * per_row
        array = np.fromfile(self.path, dtype=self.np_dtype, count=count,
                            offset=start * per_row * self.np_dtype.itemsize)
        if len(array) != count:
            raise OSError(f"{self.path}: {len(array)} values where {count} were due (truncated store)")
        tensor = torch.from_numpy(array.reshape(stop - start, *self._shape[1:]))
        for op, value in self.ops:  # the same float32 arithmetic as on an in-memory tensor
            tensor = tensor - value if op == "sub" else tensor / value
        return tensor.to(self.device)

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (start, rows[start:start + rows]) over the whole column."""
        for start in range(0, len(self), rows):
            yield start, self.read(start, min(len(self), start + rows))

    def mean_std(self, rows: int = 1 << 16) -> tuple[float, float]:
        """Return the float64 mean and population std, in one chunked pass (Chan's merge)."""
        count, mean, m2 = 0, 0.0, 0.0
        for _, chunk in self.chunks(rows):
            values = chunk.double().reshape(-1)
            n, chunk_mean = len(values), values.mean().item()
            chunk_m2 = ((values - chunk_mean) ** 2).sum().item()
            delta, total = chunk_mean - mean, count + n
            mean += delta * n / total
            m2 += chunk_m2 + delta * delta * count * n / total
            count = total
        return mean, math.sqrt(m2 / count) if count else 0.0


class RowWriter:
    """Append rows to a new store's columns; `close()` writes meta.json (the store is complete)."""

    def __init__(self, directory: Path, columns: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        self.directory = Path(directory)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        self.columns = {name: (np.dtype(dtype), tuple(shape)) for name, (dtype, shape) in columns.items()}
        # open across appends; close() or abort() closes them
        self.handles = {name: open(self.directory / f"{i}.bin", "wb")  # noqa: SIM115
                        for i, name in enumerate(self.columns)}
        self.digests = {name: hashlib.sha256(f"{dtype.str}{shape};".encode())
                        for name, (dtype, shape) in self.columns.items()}
        self.rows = 0

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Append the same number of rows to every column."""
        lengths = {len(a) for a in arrays.values()}
        if arrays.keys() != self.columns.keys() or len(lengths) != 1:
            raise ValueError(f"a row store append needs every column {list(self.columns)} with "
                             "the same number of rows")
        for name, array in arrays.items():
            dtype, shape = self.columns[name]
            data = np.ascontiguousarray(array, dtype=dtype)
            if data.shape[1:] != shape:
                raise ValueError(f"column {name!r}: rows of shape {data.shape[1:]}, expected {shape}")
            raw = data.tobytes()
            self.handles[name].write(raw)
            self.digests[name].update(raw)
        self.rows += lengths.pop()

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        meta = {"rows": self.rows, "columns": [
            {"name": name, "dtype": dtype.str, "shape": list(shape),
             "sha256": self.digests[name].hexdigest()} for name, (dtype, shape) in self.columns.items()]}
        (self.directory / META).write_text(json.dumps(meta))

    def abort(self) -> None:
        for handle in self.handles.values():
            handle.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def open_store(directory: Path) -> dict[str, DiskRows] | None:
    """Return the columns of a complete store, or None where there is none."""
    path = Path(directory) / META
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    return {column["name"]: DiskRows(Path(directory) / f"{i}.bin", dtype=column["dtype"],
                                     shape=(meta["rows"], *column["shape"]), sha256=column["sha256"])
            for i, column in enumerate(meta["columns"])}


def publish(tmp: Path, final: Path) -> None:
    """Move a finished store (or a directory of stores) into place; a twin already there wins."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another writer put the same content there first
        shutil.rmtree(tmp, ignore_errors=True)
