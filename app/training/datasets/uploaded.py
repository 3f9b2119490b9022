"""Datasets from uploaded files: NPZ arrays, or CSV/Parquet tables with a column per feature.

Rules (documented in docs/datasets.md, "Your own data"):
- Split: a `split` array/column ("train"/"test" or 0/1, and optionally "val"/"validation" rows)
  when given; otherwise a fixed 80/20 train/test split (random_state 0, stratified on the first
  classification task when every class has 2+ rows). Without validation rows the engine carves
  them out of train (splits.with_validation). Statistics (medians, means, categories) come from
  the train rows only.
- Tables: numeric feature columns are standardised with train mean/std (unless `standardize` is
  false: then they pass as they are, for teachers trained on raw values); other feature columns are
  categorical. Encoding "embedding" (the default): x holds the numeric columns first, then one
  column per categorical feature with its integer code as a float: 1..K for the categories seen
  in train (sorted), 0 for any other (the unknown bucket); a column with more than `hash_buckets`
  train categories codes each as zlib.crc32(text) % hash_buckets + 1 instead. The layout
  (splits.TableLayout) says which columns are which; a table without categorical columns has
  none (its x is the same under both encodings). Encoding "onehot": one 0/1 column per train
  category in feature order (sorted; an unseen category is all zeros).
  Labels: multiclass/binary from integers 0..K-1 as they are, otherwise the sorted distinct values map to 0..K-1 (binary: the second value is 1); multilabel from a list of 0/1
  columns; regression as floats.
- Missing values: a row with a missing target is dropped; a missing numeric feature gets the train
  median; a missing categorical feature is its own category "<missing>". Each is counted in `notes`.
- `categorical` columns are categorical even when numeric (integer codes); their categories are
  the values' text (pandas `astype("string")`: 12 -> "12", 1.5 -> "1.5").
"""

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.training.datasets.splits import DatasetSplits, TableLayout
from app.training.errors import TrainingError
from app.training.spec import TaskSpec

TEST_FRACTION = 0.2
SPLIT_SEED = 0
TRAIN, VALIDATION, TEST = 0, 1, 2  # row roles
ROLE_NAMES = {"train": TRAIN, "0": TRAIN, "test": TEST, "1": TEST, "val": VALIDATION,
              "validation": VALIDATION}


def _invalid(message: str) -> TrainingError:
    return TrainingError(code="invalid_data", message=message)


def split_roles(n: int, split: np.ndarray | None, strat: np.ndarray | None) -> np.ndarray:
    """Return each row's role (n,): TRAIN, VALIDATION or TEST."""
    if split is not None:
        values = np.char.lower(np.asarray(split).astype(str))
        unknown = sorted(set(values) - set(ROLE_NAMES))
        if unknown:
            raise _invalid(f"`split` must hold 'train', 'val'/'validation' or 'test' (or 0/1) "
                           f"only, not {unknown[:5]}")
        roles = np.array([ROLE_NAMES[value] for value in values], dtype=np.int8)
        if not (roles == TRAIN).any() or not (roles == TEST).any():
            raise _invalid("`split` must give both train and test rows")
        return roles
    from sklearn.model_selection import train_test_split

    index = np.arange(n)
    use_strat = strat is not None and np.unique(strat, return_counts=True)[1].min() >= 2
    _, test_index = train_test_split(index, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                     stratify=strat if use_strat else None)
    roles = np.full(n, TRAIN, dtype=np.int8)
    roles[test_index] = TEST
    return roles


def encode_labels(task: TaskSpec, raw: np.ndarray, notes: list[str]) -> np.ndarray:
    """Encode one task's target column(s) by the module's rules."""
    if task.kind == "regression":
        try:
            return raw.astype(np.float32)
        except ValueError as exc:
            raise _invalid(f"task '{task.name}': regression targets must be numbers") from exc
    if task.kind == "multilabel":
        values = raw.astype(np.float32)
        if not np.isin(values, [0.0, 1.0]).all():
            raise _invalid(f"task '{task.name}': multilabel columns must hold 0/1")
        return values
    classes = task.num_classes if task.kind == "multiclass" else 2
    as_float = _try_float(raw)
    if as_float is not None and np.all(as_float == np.round(as_float)) and as_float.min() >= 0 and as_float.max() < classes:
        encoded = as_float.astype(np.int64)
    else:
        distinct = sorted({str(v) for v in raw})
        if len(distinct) > classes:
            raise _invalid(f"task '{task.name}': {len(distinct)} distinct labels, the spec says {classes}")
        lookup = {v: i for i, v in enumerate(distinct)}
        encoded = np.array([lookup[str(v)] for v in raw], dtype=np.int64)
        notes.append(f"task '{task.name}': labels {distinct} -> {list(range(len(distinct)))}")
    return encoded.astype(np.float32) if task.kind == "binary" else encoded


def _try_float(raw: np.ndarray) -> np.ndarray | None:
    try:
        return raw.astype(np.float64)
    except (ValueError, TypeError):
        return None


def category_codes(text: np.ndarray, train_categories: list[str], *,
                   hash_buckets: int | None) -> tuple[np.ndarray, int]:
    """Return (codes (n,) float64, cardinality incl. the unknown bucket) of one categorical column.

    Train categories get 1..K in sorted order, anything else 0; with more than `hash_buckets`
    train categories, a train category gets zlib.crc32(utf-8 text) % hash_buckets + 1.
    """
    if hash_buckets is not None and len(train_categories) > hash_buckets:
        lookup = {c: zlib.crc32(c.encode()) % hash_buckets + 1 for c in train_categories}
        cardinality = hash_buckets + 1
    else:
        lookup = {c: i + 1 for i, c in enumerate(train_categories)}
        cardinality = len(train_categories) + 1
    return np.array([lookup.get(value, 0) for value in text], dtype=np.float64), cardinality


def finish_splits(x: np.ndarray, targets: dict[str, np.ndarray], roles: np.ndarray, notes: list[str],
                  layout: TableLayout | None = None) -> DatasetSplits:
    """Check the inputs, then cut rows into DatasetSplits by their roles (the notes go with them)."""
    if not np.isfinite(x).all():
        raise _invalid("the inputs have NaN or inf values")

    def part(role: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = roles == role
        return (torch.from_numpy(np.ascontiguousarray(x[rows].astype(np.float32))),
                {t: torch.from_numpy(np.ascontiguousarray(y[rows])) for t, y in targets.items()})

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = part(TRAIN), part(VALIDATION), part(TEST)
    has_val = bool((roles == VALIDATION).any())
    return DatasetSplits(x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test,
                         notes=tuple(notes), x_val=x_val if has_val else None,
                         y_val=y_val if has_val else None, layout=layout)


def load_npz_dataset(path: Path, *, tasks: list[TaskSpec]) -> DatasetSplits:
    """`x` (n, *shape), `y_<task>` per task, optional `split`."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    if "x" not in arrays:
        raise _invalid("the .npz dataset has no `x` array")
    x, notes = arrays["x"], []
    targets = {}
    for task in tasks:
        if f"y_{task.name}" not in arrays:
            raise _invalid(f"the .npz dataset has no `y_{task.name}` for task '{task.name}' "
                           f"(arrays: {', '.join(sorted(arrays))})")
        targets[task.name] = encode_labels(task, arrays[f"y_{task.name}"], notes)
        if len(targets[task.name]) != len(x):
            raise _invalid(f"`y_{task.name}` has {len(targets[task.name])} rows, `x` has {len(x)}")
    strat = next((targets[t.name] for t in tasks if t.kind in ("multiclass", "binary")), None)
    return finish_splits(x, targets, split_roles(len(x), arrays.get("split"), strat), notes)


def read_table(path: Path | list[Path], fmt: str) -> Any:
    """Return a CSV file, or one or several Parquet files as one table (parquet_parts.py), as a DataFrame."""
    import pandas as pd

    from app.training.datasets.parquet_parts import read_parquet_parts

    paths = path if isinstance(path, list) else [path]
    return read_parquet_parts(paths) if fmt == "parquet" else pd.read_csv(paths[0])


def load_table_dataset(path: Path | list[Path], *, fmt: str, tasks: list[TaskSpec], targets: dict[str, Any],
                       features: list[str] | None, split_column: str | None,
                       standardize: bool = True, encoding: str = "onehot",
                       hash_buckets: int | None = None,
                       categorical: list[str] | None = None) -> DatasetSplits:
    """A CSV or Parquet table (several Parquet files: one table, in order): `targets` maps each task
    to a column (multilabel: a list of columns); `encoding` "embedding" or "onehot" says how
    categorical columns are read (module rules); `categorical` names numeric columns to read as
    categories too (integer codes)."""
    import pandas as pd

    frame = read_table(path, fmt)
    notes: list[str] = []
    target_columns = {t.name: ([targets[t.name]] if isinstance(targets[t.name], str) else list(targets[t.name]))
                      for t in tasks}
    used = {c for cols in target_columns.values() for c in cols} | ({split_column} if split_column else set())
    features = features if features is not None else [c for c in frame.columns if c not in used]
    forced = set(categorical or ())
    missing = [c for c in [*used, *features, *sorted(forced)] if c not in frame.columns]
    if missing:
        raise _invalid(f"columns {missing} are not in the file (it has: {', '.join(map(str, frame.columns))})")
    if not features:
        raise _invalid("no feature columns are left once targets and the split column are taken out")
    if forced - set(features):
        raise _invalid(f"categorical columns {sorted(forced - set(features))} are not feature columns")
    before = len(frame)
    frame = frame.dropna(subset=sorted(used - {split_column} if split_column else used)).reset_index(drop=True)
    if len(frame) < before:
        notes.append(f"dropped {before - len(frame)} of {before} rows with a missing target")
    encoded = {t.name: encode_labels(t, frame[target_columns[t.name]].to_numpy() if t.kind == "multilabel"
                               else frame[target_columns[t.name][0]].to_numpy(), notes) for t in tasks}
    strat = next((encoded[t.name] for t in tasks if t.kind in ("multiclass", "binary")), None)
    roles = split_roles(len(frame), frame[split_column].to_numpy() if split_column else None, strat)
    is_train = roles == TRAIN
    columns, codes, cardinalities, categorical = [], [], [], []
    for name in features:
        col = frame[name]
        if (name not in forced and pd.api.types.is_numeric_dtype(col)
                and not pd.api.types.is_bool_dtype(col)):
            values = col.to_numpy(dtype=np.float64, copy=True)
            gaps = np.isnan(values)
            if gaps.any():
                values[gaps] = np.nanmedian(values[is_train])
                notes.append(f"feature '{name}': {int(gaps.sum())} missing values set to the train median")
            if standardize:
                mean, std = values[is_train].mean(), values[is_train].std()
                values = (values - mean) / (std if std > 0 else 1.0)
            columns.append(values[:, None])
        else:
            text = col.astype("string").fillna("<missing>").to_numpy()
            categories = sorted(set(text[is_train]))
            if encoding == "embedding":
                column_codes, cardinality = category_codes(text, categories, hash_buckets=hash_buckets)
                codes.append(column_codes[:, None])
                cardinalities.append(cardinality)
                categorical.append(str(name))
            else:
                columns.append((text[:, None] == np.array(categories)[None, :]).astype(np.float64))
    if not codes:  # no categorical column: plain numbers, whatever the encoding
        return finish_splits(np.concatenate(columns, axis=1), encoded, roles, notes)
    layout = TableLayout(numeric=len(columns), cardinalities=tuple(cardinalities), names=tuple(categorical))
    return finish_splits(np.concatenate(columns + codes, axis=1), encoded, roles, notes, layout=layout)
