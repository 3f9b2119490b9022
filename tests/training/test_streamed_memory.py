"""A dataset several times larger than the address space left to the worker trains with
data_placement "disk", and the same job loading the data whole fails under the same cap.

The cap (RLIMIT_AS, set in the child before it starts) is the address space a small job of the
same kind peaked at, measured here, plus HEADROOM_MB; the big dataset's inputs alone are more
than three times HEADROOM_MB, so they can be neither loaded nor mapped whole.
"""

import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench.stream_memory import run_job

HEADROOM_MB = 96
WIDTH = 128  # float32 features: 512 bytes a row, so the table is big in few rows


def write_npz(path: Path, rows: int, *, seed: int = 0, chunk: int = 100_000) -> int:
    """Write x (rows, WIDTH) float32, y_kind and y_flag into a stored NPZ, a chunk at a time;
    return the bytes of x."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(WIDTH, 2)).astype(np.float32)
    parts = {"x": (np.dtype("<f4"), (rows, WIDTH)), "y_kind": (np.dtype("<i8"), (rows,)),
             "y_flag": (np.dtype("<i8"), (rows,))}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        handles = {}
        for name, (dtype, shape) in parts.items():  # members one after another: x, then labels
            with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                handles[name] = handle
                np.lib.format.write_array_header_1_0(handle, {"descr": dtype.str, "fortran_order": False,
                                                              "shape": shape})
                generator = np.random.default_rng(seed)  # the same x for every member's pass
                for start in range(0, rows, chunk):
                    n = min(chunk, rows - start)
                    x = generator.normal(size=(n, WIDTH)).astype(np.float32)
                    score = x @ weights
                    values = {"x": x, "y_kind": (score[:, 0] > 0).astype(np.int64) + (score[:, 1] > 1),
                              "y_flag": (score[:, 1] > 0).astype(np.int64)}[name]
                    handle.write(np.ascontiguousarray(values, dtype=dtype).tobytes())
    return rows * WIDTH * 4


def spec(path: Path, placement: str) -> dict:
    return {"name": "capped", "dataset": {"file": str(path), "format": "npz"},
            "tasks": [{"name": "kind", "kind": "multiclass", "num_classes": 3},
                      {"name": "flag", "kind": "binary"}],
            "teachers": [{"name": "t", "tasks": ["kind", "flag"], "source": {"train": {
                "arch": {"type": "mlp", "hidden": [32]}, "epochs": 1, "batch_size": 4096,
                "lr": 0.03}}}],
            "student": {"type": "mlp", "trunk": [16], "head": [8]}, "baseline": False,
            "training": {"epochs": 1, "batch_size": 4096, "lr": 0.03, "seed": 0, "device": "cpu",
                         "data_placement": placement}, "export": []}


@pytest.mark.timeout(900)  # three child jobs: about a minute on an idle 2-core machine
def test_a_dataset_larger_than_the_address_space_left_trains_from_disk(tmp_path: Path) -> None:
    small = tmp_path / "small.npz"
    write_npz(small, 20_000)
    baseline = run_job(spec(small, "disk"), tmp_path / "small-work")
    assert baseline["ok"], baseline
    cap = int(baseline["vm_peak_mb"]) + HEADROOM_MB
    big = tmp_path / "big.npz"
    x_bytes = write_npz(big, 3 * HEADROOM_MB * 2**20 // (WIDTH * 4) + 50_000)
    assert x_bytes > 3 * HEADROOM_MB * 2**20

    whole = run_job(spec(big, "device"), tmp_path / "whole-work", cap_mb=cap)
    # loading it whole fails: an allocation (MemoryError), or the next library mapped after it
    assert not whole["ok"] and any(sign in whole["error"] for sign in (
        "MemoryError", "failed to map segment", "Cannot allocate memory")), whole

    streamed = run_job(spec(big, "disk"), tmp_path / "disk-work", cap_mb=cap)
    assert streamed["ok"], streamed
    assert streamed["vm_peak_mb"] <= cap
    assert sum(streamed["rows"][split] for split in ("train", "validation", "test")) == x_bytes // (WIDTH * 4)
    assert streamed["tasks"]["flag"]["teacher"] > 0.8  # the rows reached the model intact
