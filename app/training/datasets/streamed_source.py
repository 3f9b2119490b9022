"""Reading an uploaded Parquet table or NPZ in chunks, and the rules that do not need the whole
file: each row's role from its index, label plans decided once over the file (streamed.py)."""

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.training.datasets.parquet_parts import check_same_schema
from app.training.datasets.rowstore import RowWriter
from app.training.datasets.uploaded import (ROLE_NAMES, SPLIT_SEED, TEST, TEST_FRACTION, TRAIN,
                                            VALIDATION)
from app.training.errors import TrainingError
from app.training.spec import TaskSpec

CHUNK_ROWS = 1 << 15  # rows per read of the uploaded file
NPZ_CHUNK_BYTES = 16 << 20  # an NPZ chunk's x bytes (image rows are wide)
MEDIAN_SAMPLE = 10_000  # per numeric column: the median is exact up to this many train values
ROLES = {TRAIN: "train", VALIDATION: "val", TEST: "test"}


def _invalid(message: str) -> TrainingError:
    return TrainingError(code="invalid_data", message=message)


def uniform(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """Return a [0, 1) float per row index (splitmix64 of index, seed and stream): repeatable
    whatever the chunking."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(
            (seed * 0x632BE59BD9B4E019 + stream * 0x85157AF5 + 1) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


@dataclass
class LabelPlan:
    """How one task's raw values become labels, decided once over the whole file."""

    task: TaskSpec
    as_is: bool = True  # integers 0..K-1 (classification) read as they are
    distinct: set[str] = field(default_factory=set)
    lookup: dict[str, int] | None = None

    def observe(self, raw: np.ndarray) -> None:
        kind = self.task.kind
        if kind == "regression":
            self.encode(raw)  # refuses non-numbers early
            return
        if kind == "multilabel":
            self.encode(raw)
            return
        classes = self.task.num_classes if kind == "multiclass" else 2
        values = _try_float(raw)
        if values is None or not (np.all(values == np.round(values)) and
                                  (len(values) == 0 or (values.min() >= 0 and values.max() < classes))):
            self.as_is = False
        if len(self.distinct) <= classes:  # past that the file has too many labels anyway
            self.distinct.update(str(v) for v in raw)

    def decide(self, notes: list[str]) -> None:
        if self.task.kind in ("regression", "multilabel") or self.as_is:
            return
        classes = self.task.num_classes if self.task.kind == "multiclass" else 2
        distinct = sorted(self.distinct)
        if len(distinct) > classes:
            raise _invalid(f"task '{self.task.name}': {len(distinct)}+ distinct labels, the spec "
                           f"says {classes}")
        self.lookup = {v: i for i, v in enumerate(distinct)}
        notes.append(f"task '{self.task.name}': labels {distinct} -> {list(range(len(distinct)))}")

    def encode(self, raw: np.ndarray) -> np.ndarray:
        name, kind = self.task.name, self.task.kind
        if kind == "regression":
            try:
                return raw.astype(np.float32)
            except ValueError as exc:
                raise _invalid(f"task '{name}': regression targets must be numbers") from exc
        if kind == "multilabel":
            values = raw.astype(np.float32)
            if not np.isin(values, [0.0, 1.0]).all():
                raise _invalid(f"task '{name}': multilabel columns must hold 0/1")
            return values
        if self.lookup is None:
            encoded = raw.astype(np.float64).astype(np.int64)
        else:
            encoded = np.array([self.lookup[str(v)] for v in raw], dtype=np.int64)
        return encoded.astype(np.float32) if kind == "binary" else encoded

    def column(self) -> tuple[str, tuple[int, ...]]:
        """Return the store dtype and row shape of the encoded labels."""
        if self.task.kind == "multilabel":
            return "<f4", (self.task.num_classes,)
        return ("<i8", ()) if self.task.kind == "multiclass" else ("<f4", ())


def _try_float(raw: np.ndarray) -> np.ndarray | None:
    try:
        return raw.astype(np.float64)
    except (ValueError, TypeError):
        return None


def roles_of(index: np.ndarray, split: np.ndarray | None, *, seed: int, fraction: float,
             carve: bool) -> np.ndarray:
    """Return each row's role (module rules) from its index in the file and the split values."""
    if split is None:
        roles = np.where(uniform(SPLIT_SEED, 0, index) < TEST_FRACTION, TEST, TRAIN).astype(np.int8)
    else:
        values = np.char.lower(np.asarray(split).astype(str))
        unknown = sorted(set(values.tolist()) - set(ROLE_NAMES))
        if unknown:
            raise _invalid(f"`split` must hold 'train', 'val'/'validation' or 'test' (or 0/1) "
                           f"only, not {unknown[:5]}")
        roles = np.array([ROLE_NAMES[value] for value in values], dtype=np.int8)
    if carve:
        roles[(roles == TRAIN) & (uniform(seed, 1, index) < fraction)] = VALIDATION
    return roles


class Sources:
    """The uploaded file(s) as a stream of chunks: (row index in the file, columns)."""

    def __init__(self, paths: list[Path], fmt: str) -> None:
        self.paths, self.fmt = paths, fmt
        if fmt == "parquet" and len(paths) > 1:
            check_same_schema(paths)  # pyarrow.dataset would read the first file's schema into nulls

    def names(self) -> list[str]:
        if self.fmt == "parquet":
            return list(self._dataset().schema.names)
        with zipfile.ZipFile(self.paths[0]) as archive:
            return [name.removesuffix(".npy") for name in archive.namelist()]

    def npz_rows(self, names: list[str]) -> dict[str, int]:
        """Return the rows of each named NPZ array, from the headers alone."""
        with zipfile.ZipFile(self.paths[0]) as archive:
            shapes = {name: _npz_member(archive, name)[2] for name in names}
        return {name: shape[0] if shape else 0 for name, shape in shapes.items()}

    def _dataset(self) -> Any:
        import pyarrow.dataset as ds

        # no pre-buffering: a row group's column chunks are read as they are decoded
        fmt = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
            pre_buffer=False))
        return ds.dataset([str(p) for p in self.paths], format=fmt)

    def numeric(self, name: str) -> bool:
        import pyarrow as pa

        kind = self._dataset().schema.field(name).type
        return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))

    def chunks(self, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield (first row's index, {column: pandas Series or numpy array}) chunk by chunk."""
        if self.fmt == "parquet":
            start = 0
            # one batch of one file decoded at a time, in this thread, nothing read ahead: memory
            # stays that of a row group (pyarrow decodes a row group's columns whole)
            for batch in self._dataset().to_batches(columns=columns, batch_size=CHUNK_ROWS,
                                                    batch_readahead=0, fragment_readahead=0,
                                                    use_threads=False):
                frame = batch.to_pandas()
                yield start, {name: frame[name] for name in columns}
                start += len(frame)
            return
        yield from _npz_chunks(self.paths[0], columns)


def _npz_member(archive: zipfile.ZipFile, name: str) -> tuple[Any, np.dtype, tuple[int, ...]]:
    handle = archive.open(f"{name}.npy")
    version = np.lib.format.read_magic(handle)
    if version not in ((1, 0), (2, 0)):
        raise _invalid(f"the .npz array `{name}` has .npy format {version}; save it with numpy")
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(handle)
    if fortran and len(shape) > 1:
        raise _invalid(f"the .npz array `{name}` is in Fortran order; save it in C order")
    if dtype.hasobject:
        raise _invalid(f"the .npz array `{name}` holds Python objects (pickles are refused)")
    return handle, dtype, tuple(shape)


def _npz_chunks(path: Path, names: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Read the members of an NPZ (stored or deflated) side by side, a chunk of rows at a time."""
    with zipfile.ZipFile(path) as archive:
        members = {name: _npz_member(archive, name) for name in names}
        lengths = {name: shape[0] if shape else 0 for name, (_, _, shape) in members.items()}
        if len(set(lengths.values())) != 1:
            raise _invalid(f"the .npz arrays do not have the same number of rows: {lengths}")
        total = lengths[names[0]]
        widest = max(int(np.prod(s[1:], dtype=np.int64)) * d.itemsize for _, d, s in members.values())
        rows = max(1, min(CHUNK_ROWS, NPZ_CHUNK_BYTES // max(widest, 1)))
        for start in range(0, total, rows):
            count = min(rows, total - start)
            chunk = {}
            for name, (handle, dtype, shape) in members.items():
                size = count * int(np.prod(shape[1:], dtype=np.int64))
                raw = handle.read(size * dtype.itemsize)
                chunk[name] = np.frombuffer(raw, dtype=dtype, count=size).reshape(count, *shape[1:])
            yield start, chunk


def open_writers(directory: Path, x_shape: tuple[int, ...],
                 plans: list[LabelPlan]) -> dict[int, RowWriter]:
    """Return a writer per role: x float32 and one column per task."""
    columns = {"x": ("<f4", x_shape), **{f"y/{p.task.name}": p.column() for p in plans}}
    return {role: RowWriter(Path(directory) / name, columns) for role, name in ROLES.items()}


def check_roles(counts: dict[int, int]) -> None:
    """Every role needs rows (train and test by the split, validation by the carve)."""
    if not counts.get(TRAIN) or not counts.get(TEST):
        raise _invalid("the split gives no train or no test rows")
    if not counts.get(VALIDATION):
        raise _invalid("no validation rows: the dataset is too small for its validation_fraction")
