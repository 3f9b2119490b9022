"""Several Parquet files as one table (`dataset.files`): the same columns with the same types,
rows in the listed order.

pyarrow.dataset takes its schema from the first file and would fill a column another file lacks
with nulls (rows then dropped as "missing target", or a feature set to the median) and skip a
column it adds: every file's schema is compared from its footer before any row is read.
"""

from pathlib import Path
from typing import Any

from app.training.errors import TrainingError

SCHEMA_MISMATCH = "dataset_schema_mismatch"


def schema_difference(first: dict[str, str], other: dict[str, str]) -> str:
    """Return how `other`'s {column: type} differs from `first`'s ("" when the same)."""
    missing = [name for name in first if name not in other]
    extra = [name for name in other if name not in first]
    retyped = [f"'{name}' is {other[name]}, not {first[name]}" for name in first
               if name in other and other[name] != first[name]]
    parts = ([f"lacks columns {missing}"] if missing else []) + (
        [f"has extra columns {extra}"] if extra else []) + retyped
    if any(name.startswith("__index_level_") for name in missing + extra):
        parts.append("a __index_level_ column is a stored pandas index: write the files with index=False")
    return "; ".join(parts)


def parquet_summary(path: Path) -> dict[str, Any]:
    """Return one Parquet file's columns ({name: Arrow type}, in order), rows and row groups, from
    its footer alone (raises what pyarrow raises for a file that is not Parquet)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    schema = meta.schema.to_arrow_schema()
    if len(set(schema.names)) != len(schema.names):
        raise TrainingError(code="invalid_data", message="the Parquet file repeats a column name")
    # string and large_string (pandas 3 writes the latter) are the same Parquet column and read alike
    return {"columns": {name: str(schema.field(name).type).replace("large_", "") for name in schema.names},
            "rows": meta.num_rows, "row_groups": meta.num_row_groups}


def check_same_schema(paths: list[Path]) -> None:
    """Raise a dataset_schema_mismatch TrainingError unless every file has the first's columns and types."""
    first = parquet_summary(paths[0])["columns"]
    for index, path in enumerate(paths[1:], start=1):
        difference = schema_difference(first, parquet_summary(path)["columns"])
        if difference:
            raise TrainingError(code=SCHEMA_MISMATCH, message=(
                f"dataset.files[{index}]: {difference} (against dataset.files[0]); every file of "
                "dataset.files needs the same columns with the same types"))


def read_parquet_parts(paths: list[Path]) -> Any:
    """Return the files' rows as one pandas DataFrame, in order, with a fresh 0..n-1 index."""
    import pandas as pd

    if len(paths) == 1:
        return pd.read_parquet(paths[0])
    check_same_schema(paths)
    return pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
