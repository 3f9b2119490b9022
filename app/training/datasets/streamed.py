"""Uploaded datasets larger than memory: Parquet (one file or several as one table) and NPZ files
read in fixed-size chunks into train / validation / test row stores (rowstore.py), never whole.

The rules are uploaded.py's (label encoding, standardisation, category codes, missing values, the
split column), applied chunk by chunk after one streaming pass of statistics, with three
differences that loading whole would not need:
- Without a split column a row's role is a seeded draw from its index in the file: test with
  probability 0.2 (seed 0, as uploaded.py's test split), else validation with probability
  `validation_fraction` (the job's seed). Not stratified: no class counts are known before the pass.
  A split column without validation rows gets them the same way from its train rows.
- The train median that fills a missing number is that of a seeded uniform sample of at most
  MEDIAN_SAMPLE train values (exact below that many).
- Categories are the text pandas gives each chunk (as uploaded.py gives the whole column).
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from app.training.datasets.rowstore import DiskRows, open_store, publish
from app.training.datasets.splits import DatasetSplits, TableLayout
from app.training.datasets.streamed_source import CHUNK_ROWS, ROLES, Sources
from app.training.datasets.streamed_tables import write_npz_stores, write_table_stores
from app.training.errors import TrainingError
from app.training.files import FileResolver, LocalFileResolver
from app.training.spec import DatasetSpec, TaskSpec
from app.training.spec_files import dataset_files

STORE_VERSION = "streamed-v1"  # bump when a store's content for the same inputs changes


def store_key(spec: DatasetSpec, tasks: list[TaskSpec], paths: list[Path], seed: int) -> str:
    """Return the key of the stores these inputs make (file identity by path, size and mtime)."""
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    payload = json.dumps({"version": STORE_VERSION, "dataset": spec.model_dump(mode="json"),
                          "tasks": [t.model_dump(mode="json") for t in tasks], "seed": seed,
                          "files": files, "chunk": CHUNK_ROWS}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def load_streamed(spec: DatasetSpec, *, tasks: list[TaskSpec], paths: list[Path], seed: int,
                  directory: Path) -> DatasetSplits:
    """Return the dataset's splits with train rows (inputs and targets) and validation and test
    inputs on disk; validation and test targets, a few bytes a row, in memory."""
    final = Path(directory) / store_key(spec, tasks, paths, seed)
    if not (final / "done.json").exists():
        tmp = final.with_name(f".{final.name}.tmp")
        sources = Sources(paths, spec.format or "")
        writer = write_npz_stores if spec.format == "npz" else write_table_stores
        info = writer(spec, tasks=tasks, sources=sources, seed=seed, directory=tmp)
        (tmp / "done.json").write_text(json.dumps(info))
        publish(tmp, final)
    info = json.loads((final / "done.json").read_text())
    stores = {role: open_store(final / role) for role in ROLES.values()}
    assert all(store is not None for store in stores.values())
    train, val, test = stores["train"], stores["val"], stores["test"]
    names = [task.name for task in tasks]

    def whole(store: dict[str, DiskRows]) -> dict[str, torch.Tensor]:
        return {name: store[f"y/{name}"][:] for name in names}

    layout = TableLayout.from_json(info["layout"])
    return DatasetSplits(x_train=train["x"], x_test=test["x"], x_val=val["x"],  # type: ignore[arg-type]
                         y_train={name: train[f"y/{name}"] for name in names},  # type: ignore[misc]
                         y_val=whole(val), y_test=whole(test), notes=tuple(info["notes"]),
                         layout=layout)


def load_disk_data(spec: DatasetSpec, *, tasks: list[TaskSpec], seed: int,
                   resolver: FileResolver | None, device: torch.device,
                   directory: Path) -> DatasetSplits:
    """Load an uploaded Parquet or NPZ dataset onto disk as row stores (data_placement "disk");
    validation and test targets go to `device`, and their inputs are read onto it chunk by chunk."""
    resolver = resolver or LocalFileResolver()
    assert spec.builtin is None, "the spec refuses 'disk' without an uploaded file"
    paths = [resolver.resolve(ref) for ref in dataset_files(spec)]  # dataset.files: one table
    try:
        data = load_streamed(spec, tasks=tasks, paths=paths, seed=seed, directory=directory)
    except TrainingError:
        raise
    except Exception as exc:  # pyarrow/zip parse errors: say what the file is, not where it broke
        raise TrainingError(code="invalid_data", message=(
            f"dataset file {', '.join(dataset_files(spec))} could not be read as {spec.format}: "
            f"{type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}")) from exc
    assert data.x_val is not None and data.y_val is not None
    return dataclasses.replace(
        data, x_val=data.x_val.to(device), x_test=data.x_test.to(device),
        y_val={task: y.to(device) for task, y in data.y_val.items()},
        y_test={task: y.to(device) for task, y in data.y_test.items()})
