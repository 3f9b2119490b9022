"""Peak memory of a job whose rows stay on disk (training.data_placement "disk").

Writes a synthetic Parquet table (16 float32 features, one text category, a 3-class and a binary
task, written in row groups so the writer never holds the table), then runs the same job on a
large and a small table, each in a fresh child process, and reports each child's peak RSS
(ru_maxrss) and its ratio. The target (issue 16): the large job's peak within 1.5x the small one's.

    .venv/bin/python -m bench.stream_memory --rows 5000000 --small-rows 50000 --epochs 1

`--parts K` writes the large table as K Parquet files (the same rows, split at row groups) and
names them as one dataset (`dataset.files`). `--cap-mb N` puts an address-space limit
(RLIMIT_AS) on the children; tests use it.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FEATURES = 16
GROUP_ROWS = 50_000  # row groups: pyarrow decodes one whole at a time, so both tables use the same
COLORS = np.array(["red", "green", "blue", "grey"], dtype=object)


def write_table(path: Path, rows: int, *, seed: int = 0) -> int:
    """Write `rows` synthetic rows to a Parquet file; return its size in bytes."""
    return sum(p.stat().st_size for p in write_parts([path], rows, seed=seed))


def write_parts(paths: list[Path], rows: int, *, seed: int = 0) -> list[Path]:
    """Write `rows` synthetic rows across `paths` in order (whole row groups, about as many in
    each file); one file holds the same rows as several."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(FEATURES, 2)).astype(np.float32)
    groups = -(-rows // GROUP_ROWS)
    writers: list[Any] = []
    for group, start in enumerate(range(0, rows, GROUP_ROWS)):
        n = min(GROUP_ROWS, rows - start)
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        color = rng.integers(0, len(COLORS), size=n)
        score = x @ weights  # (n, 2)
        kind = (score[:, 0] > 0).astype(np.int64) + (color == 0)
        columns = {f"f{i}": x[:, i] for i in range(FEATURES)}
        columns.update(color=COLORS[color], kind=kind, flag=(score[:, 1] > 0.3).astype(np.int64))
        table = pa.table(columns)
        part = group * len(paths) // groups
        while len(writers) <= part:
            writers.append(pq.ParquetWriter(paths[len(writers)], table.schema))
        writers[part].write_table(table)
    for writer in writers:
        writer.close()
    return paths[:len(writers)]


def job_spec(path: Path | list[Path], *, epochs: int, placement: str = "disk") -> dict[str, Any]:
    """The benchmark's job: an in-job MLP teacher, an MLP student and the baseline, on the table
    (a list of paths: one table in several files, `dataset.files`)."""
    dataset = ({"files": [str(p) for p in path]} if isinstance(path, list)
               else {"file": str(path), "format": "parquet"})
    return {
        "name": "stream-memory", "dataset": dataset,
        "tasks": [{"name": "kind", "kind": "multiclass", "num_classes": 3},
                  {"name": "flag", "kind": "binary"}],
        "teachers": [{"name": "teacher", "tasks": ["kind", "flag"], "source": {"train": {
            "arch": {"type": "mlp", "hidden": [64]}, "epochs": epochs, "batch_size": 4096,
            "lr": 0.01}}}],
        "student": {"type": "mlp", "trunk": [32], "head": [16]},
        "training": {"epochs": epochs, "batch_size": 4096, "lr": 0.01, "seed": 0, "device": "cpu",
                     "data_placement": placement},
        "export": []}


CHILD = """
import json, resource, sys, time
from pathlib import Path
spec, workdir = json.loads(sys.argv[1]), Path(sys.argv[2])
started = time.perf_counter()
try:
    from app.training.loop import train
    from app.training.spec import JobSpec
    result = train(JobSpec.model_validate(spec), workdir, cache_dir=workdir / "cache")
    outcome = {"ok": True, "rows": result.results["rows"], "tasks": {
        t: {k: v[k] for k in ("teacher", "student", "baseline")} for t, v in result.results["tasks"].items()}}
except Exception as error:  # a capped run that loads the data whole fails here
    outcome = {"ok": False, "error": f"{type(error).__name__}: {error}"}
status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
outcome.update(seconds=round(time.perf_counter() - started, 1),
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               vm_peak_mb=round(int(status["VmPeak"].split()[0]) / 1024, 1))
print("RESULT " + json.dumps(outcome))
"""


def run_job(spec: dict[str, Any], workdir: Path, *, cap_mb: int | None = None,
            timeout: float = 3600) -> dict[str, Any]:
    """Train `spec` in a fresh child process (capped at `cap_mb` of address space); return its
    outcome, peak RSS and peak address space."""
    def limit() -> None:
        if cap_mb is not None:
            resource.setrlimit(resource.RLIMIT_AS, (cap_mb << 20, cap_mb << 20))

    # One thread and two malloc arenas: each thread's stack and arena is address space too.
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec), str(workdir)], cwd=ROOT,
                          env=env, preexec_fn=limit, capture_output=True, text=True, timeout=timeout,
                          check=False)  # a failed child reports through its RESULT line
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"ok": False, "returncode": done.returncode, "error": done.stderr[-2000:]}
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--small-rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--parts", type=int, default=1, help="write the large table as this many files")
    parser.add_argument("--cap-mb", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="a directory to keep the tables in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = args.keep or Path(scratch)
        base.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"epochs": args.epochs, "parts": args.parts, "load_before": os.getloadavg()}
        for name, rows, parts in (("small", args.small_rows, 1), ("large", args.rows, args.parts)):
            paths = [base / (f"table-{rows}.parquet" if parts == 1 else f"table-{rows}-{i}-of-{parts}.parquet")
                     for i in range(parts)]
            started = time.perf_counter()
            if not all(p.exists() for p in paths):
                paths = write_parts(paths, rows)
            written = time.perf_counter() - started
            size = sum(p.stat().st_size for p in paths)
            outcome = run_job(job_spec(paths if parts > 1 else paths[0], epochs=args.epochs),
                              base / f"work-{rows}-{time.time_ns()}", cap_mb=args.cap_mb)
            report[name] = {"rows": rows, "files": len(paths), "parquet_mb": round(size / 2**20, 1),
                            "write_seconds": round(written, 1), **outcome}
            print(json.dumps({name: report[name]}), flush=True)
        if report["small"].get("peak_rss_mb") and report["large"].get("peak_rss_mb"):
            report["rss_ratio"] = round(report["large"]["peak_rss_mb"] / report["small"]["peak_rss_mb"], 3)
        report["load_after"] = os.getloadavg()
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
