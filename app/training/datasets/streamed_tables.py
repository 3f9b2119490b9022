"""The two streaming passes that turn an uploaded Parquet table or NPZ into row stores: statistics
of the train rows first (labels, medians, means, categories), then the encoded rows by role.

The encodings are uploaded.py's, chunk by chunk (see streamed.py for where they differ).
"""

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.training.datasets.rowstore import RowWriter
from app.training.datasets.splits import TableLayout
from app.training.datasets.streamed_source import (MEDIAN_SAMPLE, ROLES, LabelPlan, Sources, _invalid,
                                            check_roles, open_writers, roles_of, uniform)
from app.training.datasets.uploaded import TRAIN, VALIDATION, category_codes
from app.training.spec import DatasetSpec, TaskSpec


@dataclass
class NumericStats:
    """Train statistics of one numeric column, merged chunk by chunk."""

    column: int  # the column's position: its median sample draws its own stream
    rows: int = 0  # train rows, missing values included
    shift: float | None = None  # sums are of (v - shift): no cancellation on large offsets
    sum1: float = 0.0
    sum2: float = 0.0
    present: int = 0
    gaps: int = 0  # missing values in any role (the note)
    keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    sample: np.ndarray = field(default_factory=lambda: np.empty(0))

    def add(self, values: np.ndarray, index: np.ndarray, train: np.ndarray) -> None:
        self.gaps += int(np.isnan(values).sum())
        values, index = values[train], index[train]
        self.rows += len(values)
        present = ~np.isnan(values)
        values, index = values[present], index[present]
        if not len(values):
            return
        if self.shift is None:
            self.shift = float(values[0])
        shifted = values - self.shift
        self.sum1 += float(shifted.sum())
        self.sum2 += float((shifted * shifted).sum())
        self.present += len(values)
        # bottom-k sample by a seeded key per row index: uniform, whatever the chunking
        keys = np.concatenate([self.keys, uniform(7, 100 + self.column, index)])
        sample = np.concatenate([self.sample, values])
        if len(keys) > MEDIAN_SAMPLE:
            keep = np.argpartition(keys, MEDIAN_SAMPLE)[:MEDIAN_SAMPLE]
            keys, sample = keys[keep], sample[keep]
        self.keys, self.sample = keys, sample

    def median(self) -> float:
        return float(np.median(self.sample)) if len(self.sample) else float("nan")

    def mean_std(self) -> tuple[float, float]:
        """Mean and std of the train values once missing ones hold the median (as uploaded.py)."""
        fill = self.median() - (self.shift or 0.0)
        missing = self.rows - self.present
        sum1, sum2 = self.sum1 + missing * fill, self.sum2 + missing * fill * fill
        mean = sum1 / self.rows
        return (self.shift or 0.0) + mean, float(np.sqrt(max(sum2 / self.rows - mean * mean, 0.0)))


def _role_counts(sources: Sources, split: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for start, chunk in sources.chunks([split]):
        values = chunk[split]
        roles = roles_of(start + np.arange(len(values)), np.asarray(values), seed=0, fraction=0.0,
                         carve=False)
        for role, count in zip(*np.unique(roles, return_counts=True), strict=True):
            counts[int(role)] = counts.get(int(role), 0) + int(count)
    return counts


def _write(directory: Path, passes: Any) -> dict[str, Any]:
    """Run the writing pass; a failure leaves no partial store behind."""
    try:
        return passes()
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def write_table_stores(spec: DatasetSpec, *, tasks: list[TaskSpec], sources: Sources, seed: int,
                       directory: Path) -> dict[str, Any]:
    """Write the train / val / test stores of a Parquet table; return the notes and the layout."""
    names = sources.names()
    targets = {t.name: (spec.targets or {}).get(t.name, t.name) for t in tasks}
    target_columns = {name: [v] if isinstance(v, str) else list(v) for name, v in targets.items()}
    split = spec.split_column
    used = {c for cols in target_columns.values() for c in cols} | ({split} if split else set())
    features = spec.features if spec.features is not None else [c for c in names if c not in used]
    forced = set(spec.categorical or ())
    missing = [c for c in [*used, *features, *sorted(forced)] if c not in names]
    if missing:
        raise _invalid(f"columns {missing} are not in the file (it has: {', '.join(map(str, names))})")
    if not features:
        raise _invalid("no feature columns are left once targets and the split column are taken out")
    if forced - set(features):
        raise _invalid(f"categorical columns {sorted(forced - set(features))} are not feature columns")
    numeric = {f for f in features if f not in forced and sources.numeric(f)}
    needed = sorted(used - {split}) if split else sorted(used)
    read = list(dict.fromkeys([*needed, *features, *([split] if split else [])]))
    carve = not split or not _role_counts(sources, split).get(VALIDATION)
    fraction = spec.validation_fraction
    plans = {t.name: LabelPlan(t) for t in tasks}

    def rows(start: int, frame: Any) -> tuple[Any, np.ndarray, np.ndarray, int]:
        keep = frame[needed].notna().all(axis=1).to_numpy()
        index = start + np.flatnonzero(keep)
        kept = frame[keep]
        roles = roles_of(index, kept[split].to_numpy() if split else None, seed=seed,
                         fraction=fraction, carve=carve)
        return kept, index, roles, int((~keep).sum())

    def raw_labels(frame: Any, task: TaskSpec) -> np.ndarray:
        cols = target_columns[task.name]
        return frame[cols].to_numpy() if task.kind == "multilabel" else frame[cols[0]].to_numpy()

    def text(frame: Any, name: str) -> np.ndarray:
        return frame[name].astype("string").fillna("<missing>").to_numpy()

    # Pass 1: train statistics.
    stats = {f: NumericStats(column=i) for i, f in enumerate(features) if f in numeric}
    categories: dict[str, set[str]] = {f: set() for f in features if f not in numeric}
    counts: dict[int, int] = {}
    dropped = total = 0
    for start, chunk in sources.chunks(read):
        frame, index, roles, gone = rows(start, _frame(chunk))
        dropped, total = dropped + gone, total + gone + len(frame)
        train = roles == TRAIN
        for plan in plans.values():
            plan.observe(raw_labels(frame, plan.task))
        for name, stat in stats.items():
            stat.add(frame[name].to_numpy(dtype=np.float64, copy=True), index, train)
        for name, seen in categories.items():
            seen.update(text(frame, name)[train].tolist())
        for role in ROLES:
            counts[role] = counts.get(role, 0) + int((roles == role).sum())
    check_roles(counts)
    notes = [f"dropped {dropped} of {total} rows with a missing target"] if dropped else []
    for plan in plans.values():
        plan.decide(notes)
    medians = {name: stat.median() for name, stat in stats.items()}
    scales = {name: stat.mean_std() for name, stat in stats.items()}
    notes += [f"feature '{name}': {stat.gaps} missing values set to the train median"
              for name, stat in stats.items() if stat.gaps]
    ordered = {name: sorted(seen) for name, seen in categories.items()}
    embedding = (spec.encoding or "embedding") == "embedding"
    width = len(stats) + sum(1 if embedding else len(ordered[f]) for f in features if f not in numeric)
    cardinalities = [category_codes(np.empty(0, dtype=object), ordered[f],
                                    hash_buckets=spec.hash_buckets)[1]
                     for f in features if f not in numeric] if embedding else []
    layout = (TableLayout(numeric=len(stats), cardinalities=tuple(cardinalities),
                          names=tuple(str(f) for f in features if f not in numeric))
              if cardinalities else None)

    # Pass 2: the encoded rows, by role.
    def encode(frame: Any) -> np.ndarray:
        columns, codes = [], []
        for name in features:
            if name in numeric:
                values = frame[name].to_numpy(dtype=np.float64, copy=True)
                values[np.isnan(values)] = medians[name]
                if spec.standardize is not False:
                    mean, std = scales[name]
                    values = (values - mean) / (std if std > 0 else 1.0)
                columns.append(values[:, None])
            elif embedding:
                codes.append(category_codes(text(frame, name), ordered[name],
                                            hash_buckets=spec.hash_buckets)[0][:, None])
            else:
                columns.append((text(frame, name)[:, None] == np.array(ordered[name], dtype=object)[None, :])
                               .astype(np.float64))
        return np.concatenate(columns + codes, axis=1).astype(np.float32)

    def passes() -> dict[str, Any]:
        writers = open_writers(directory, (width,), list(plans.values()))
        for start, chunk in sources.chunks(read):
            frame, _, roles, _ = rows(start, _frame(chunk))
            _append(writers, encode(frame), {t: p.encode(raw_labels(frame, p.task))
                                             for t, p in plans.items()}, roles)
        for writer in writers.values():
            writer.close()
        return {"notes": notes, "layout": None if layout is None else layout.as_json(),
                "rows": {ROLES[role]: count for role, count in counts.items()}}

    return _write(directory, passes)


def _frame(chunk: dict[str, Any]) -> Any:
    import pandas as pd

    return pd.DataFrame(chunk)


def _append(writers: dict[int, RowWriter], x: np.ndarray, labels: dict[str, np.ndarray],
            roles: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise _invalid("the inputs have NaN or inf values")
    for role, writer in writers.items():
        mine = roles == role
        if mine.any():
            writer.append({"x": x[mine], **{f"y/{task}": y[mine] for task, y in labels.items()}})


def write_npz_stores(spec: DatasetSpec, *, tasks: list[TaskSpec], sources: Sources, seed: int,
                     directory: Path) -> dict[str, Any]:
    """Write the train / val / test stores of an NPZ: `x`, `y_<task>` per task, optional `split`."""
    names = sources.names()
    if "x" not in names:
        raise _invalid("the .npz dataset has no `x` array")
    for task in tasks:
        if f"y_{task.name}" not in names:
            raise _invalid(f"the .npz dataset has no `y_{task.name}` for task '{task.name}' "
                           f"(arrays: {', '.join(sorted(names))})")
    split = "split" if "split" in names else None
    labels = [f"y_{task.name}" for task in tasks]
    rows = sources.npz_rows(["x", *labels, *([split] if split else [])])
    for name, count in rows.items():
        if count != rows["x"]:
            raise _invalid(f"`{name}` has {count} rows, `x` has {rows['x']}")
    carve = not split or not _role_counts(sources, split).get(VALIDATION)
    plans = {t.name: LabelPlan(t) for t in tasks}

    def roles(start: int, chunk: dict[str, Any], length: int) -> np.ndarray:
        return roles_of(start + np.arange(length), chunk[split] if split else None, seed=seed,
                        fraction=spec.validation_fraction, carve=carve)

    counts: dict[int, int] = {}
    for start, chunk in sources.chunks([*labels, *([split] if split else [])]):
        for plan in plans.values():
            plan.observe(chunk[f"y_{plan.task.name}"])
        found = roles(start, chunk, len(chunk[labels[0]]))
        for role in ROLES:
            counts[role] = counts.get(role, 0) + int((found == role).sum())
    check_roles(counts)
    notes: list[str] = []
    for plan in plans.values():
        plan.decide(notes)

    def passes() -> dict[str, Any]:
        writers: dict[int, RowWriter] | None = None
        for start, chunk in sources.chunks(["x", *labels, *([split] if split else [])]):
            x = chunk["x"].astype(np.float32)
            writers = writers or open_writers(directory, x.shape[1:], list(plans.values()))
            _append(writers, x, {t: p.encode(chunk[f"y_{t}"]) for t, p in plans.items()},
                    roles(start, chunk, len(x)))
        assert writers is not None
        for writer in writers.values():
            writer.close()
        return {"notes": notes, "layout": None,
                "rows": {ROLES[role]: count for role, count in counts.items()}}

    return _write(directory, passes)
