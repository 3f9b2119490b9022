"""A dataset of several uploaded files (`dataset.files`): Parquet files read as one table, in the
listed order; the rules that need only the dataset section (the files' columns are compared when
they are read: datasets/parquet_parts.py, and over HTTP from the uploads' records: app/files/refs.py).
"""

from collections.abc import Callable
from typing import Any

Error = Callable[[str, str], Exception]


def dataset_files(dataset: Any) -> list[str]:
    """Return the uploaded files a dataset's rows come from, in order (none for a built-in)."""
    if dataset.files is not None:
        return list(dataset.files)
    return [] if dataset.file is None else [dataset.file]


def check_dataset_files(dataset: Any, error: Error) -> None:
    """Raise `error(kind, message)` when `dataset.files` cannot be read as one Parquet table."""
    if dataset.files is None:
        return
    if dataset.format is None:
        dataset.format = "parquet"  # written back: the stored spec says how the files are read
    if dataset.format != "parquet":
        raise error("dataset_files_format", (
            f"dataset.format: dataset.files are read as one Parquet table, not {dataset.format!r}; "
            "give a single npz, csv or images upload as dataset.file"))
    first: dict[str, int] = {}
    for index, ref in enumerate(dataset.files):
        if ref in first:
            raise error("dataset_files_repeated", (
                f"dataset.files[{index}]: {ref!r} is dataset.files[{first[ref]}] already; "
                "each file is read once"))
        first[ref] = index
