"""What the experiment-tracker export costs a job: time inside the TensorBoard writer (always on)
and, with --mlflow, inside the MLflow tracker against a real `mlflow server` on loopback.

    .venv/bin/python -m bench.tracking_overhead examples/digits-mt-tiny.json --reps 3
    .venv/bin/python -m bench.tracking_overhead examples/digits-mt-tiny.json --reps 3 --mlflow

The tracker methods are wrapped with timers around one in-process `train()` each rep: on a shared
machine a with/without difference of whole-job wall times is mostly noise, the time spent inside
the export is not. tensorboardX is imported (and timed) first, as the worker preloads it.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch

from app.training.callbacks import TrainCallbacks
from app.training.loop import train
from app.training.spec import JobSpec
from app.training.tracking import ARCHIVE_NAME, TensorBoardWriter

SPENT: dict[str, float] = {}


def timed(cls: type, method: str, key: str) -> None:
    """Replace cls.method with a wrapper that adds its time to SPENT[key]."""
    original: Callable[..., Any] = getattr(cls, method)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SPENT[key] = SPENT.get(key, 0.0) + time.perf_counter() - start

    setattr(cls, method, wrapper)


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """Run `mlflow server` (SQLite store, served artifacts) for the block; yield its URI."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(root / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            uri = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{uri}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            yield uri
        finally:
            os.killpg(server.pid, 15)
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mlflow", action="store_true", help="also log to a real MLflow server")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    import tensorboardX  # noqa: F401

    print(f"tensorboardX import: {(time.perf_counter() - start) * 1000:.0f} ms")
    for method, key in (("on_epoch_end", "tb epochs"), ("archive", "tb close+zip")):
        timed(TensorBoardWriter, method, key)
    spec = JobSpec.model_validate(json.loads(args.spec.read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.mlflow:
            from app.training import mlflow_tracking

            for method, key in (("__enter__", "mlflow open"), ("on_epoch_end", "mlflow epochs"),
                                ("on_train_end", "mlflow end")):
                timed(mlflow_tracking.MlflowTracker, method, key)
            with mlflow_server(root) as uri:
                for rep in range(args.reps):
                    SPENT.clear()
                    with mlflow_tracking.tracked(spec, TrainCallbacks(), tracking_uri=uri,
                                                 default_experiment="bench", workdir=root / f"w{rep}",
                                                 job_id=None) as callbacks:
                        run(spec, root, rep, callbacks)
        else:
            for rep in range(args.reps):
                SPENT.clear()
                run(spec, root, rep, TrainCallbacks())


def run(spec: JobSpec, root: Path, rep: int, callbacks: TrainCallbacks) -> None:
    start = time.perf_counter()
    result = train(spec, root / f"w{rep}", callbacks=callbacks, cache_dir=root / "cache")
    total = time.perf_counter() - start
    epochs = sum(stage["epochs"] for stage in result.results["stages"])
    size = (root / f"w{rep}" / "artifacts" / ARCHIVE_NAME).stat().st_size
    parts = ", ".join(f"{key} {value * 1000:.1f} ms" + (f" ({value / epochs * 1000:.2f} ms/epoch)"
                                                        if key.endswith("epochs") else "")
                      for key, value in SPENT.items())
    print(f"rep {rep + 1}: train {total:.2f} s, {epochs} epochs, tensorboard.zip {size} B; {parts}; "
          f"export total {sum(SPENT.values()):.3f} s ({sum(SPENT.values()) / total:.1%})", flush=True)


if __name__ == "__main__":
    main()
