"""DDP overhead on CPU: 2 gloo ranks x 1 thread against 1 process x 2 threads, same job and global batch.

    .venv/bin/python -m bench.ddp_overhead [--reps 2] [--epochs 5]

Job: MNIST-1D with a 50k generated transfer set (bench.engine_overhead.MNIST1D: cnn1d teacher,
1 epoch here; MLP [100, 100] student, batch 256). Each rep runs the job once with
`resources.devices: 1` (torch threads 2) and once with `devices: 2` (1 thread per rank, through
app.training.launch.train_job, i.e. the worker's path), interleaved. Reported per run: the
student stage's seconds (results.json "stages"), the whole call's wall seconds, and the time to
the first stage start (launch: spawning the rank, its imports, the process group, the data).
The 50k transfer rows are generated once before the runs, and every run shares one cache
directory: the second rep's teacher pass hits the output cache (same teacher weights), which
changes the wall and launch times, not the student stage's. Where the time goes under DDP: a 2-rank gloo micro-benchmark times one all-reduce of the
student's gradient size (what DDP reduces each step) and one of a single float (the per-step
stop agreement); multiplied by the student's steps they give its all-reduce seconds.
Ratio = student seconds (2 ranks) / student seconds (1 process): below 1 is a speed-up.
The machine is shared: `uptime` is printed before and after.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from app.training.callbacks import TrainCallbacks
from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.datasets.registry import generate_transfer_set
from app.training.launch import train_job
from app.training.models import build_model
from app.training.spec import JobSpec
from bench.engine_overhead import MNIST1D

ALLREDUCE_REPEATS = 300


class FirstStage(TrainCallbacks):
    """Remember when the first stage started (rank 0)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        if self.at is None:
            self.at = time.perf_counter()


def run_job(devices: int, epochs: int, root: Path) -> dict[str, Any]:
    spec = json.loads(json.dumps(MNIST1D))
    spec["training"]["epochs"] = epochs
    spec["teachers"][0]["source"]["train"]["epochs"] = 1
    spec["resources"] = {"devices": devices}
    torch.set_num_threads(2)  # 1 process x 2 threads; train_job gives 2 ranks 1 thread each
    first = FirstStage()
    started = time.perf_counter()
    results = train_job(JobSpec.model_validate(spec), root / f"run-{devices}-{time.time_ns()}",
                        callbacks=first, cache_dir=root / "cache").results
    wall = time.perf_counter() - started
    student = next(s for s in results["stages"] if s["name"] == "student")
    return {"devices": devices, "student_seconds": student["seconds"], "student_steps": student["steps"],
            "wall_seconds": round(wall, 2), "to_first_stage_seconds": round(first.at - started, 2),
            "ranks": results.get("ranks")}


def _allreduce_rank(rank: int, port: int, numel: int, out: Any) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    timings = {}
    for name, size in (("gradients", numel), ("stop_flag", 1)):
        tensor = torch.randn(size)
        for _ in range(20):
            dist.all_reduce(tensor)
        dist.barrier()
        started = time.perf_counter()
        for _ in range(ALLREDUCE_REPEATS):
            dist.all_reduce(tensor)
        timings[name] = (time.perf_counter() - started) / ALLREDUCE_REPEATS
    if rank == 0:
        out.put(timings)
    dist.destroy_process_group()


def allreduce_seconds(numel: int) -> dict[str, float]:
    """Time one gloo all-reduce of `numel` floats and of one float between 2 local ranks."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = [context.Process(target=_allreduce_rank, args=(rank, port, numel, queue)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    timings = queue.get(timeout=300)
    for process in ranks:
        process.join()
    return timings


def uptime() -> str:
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    print("load before:", uptime(), f"| cores: {os.cpu_count()}", flush=True)
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        # the 50k transfer rows are generated once, untimed (every run then reads them cached)
        job = JobSpec.model_validate(MNIST1D)
        generate_transfer_set(job.dataset.builtin, job.transfer_set.generate, job.training.seed,
                              cache_dir=Path(tmp) / "cache" / "transfer-inputs")
        for rep in range(args.reps):
            for devices in (1, 2):
                run = run_job(devices, args.epochs, Path(tmp))
                runs[devices].append(run)
                print(f"rep {rep + 1} devices {devices}: {json.dumps(run)}", flush=True)
    student = build_model(job.student, input_shape=tuple(BUILTIN_DATASETS["mnist1d-mt"]["input_shape"]),
                          tasks=job.tasks)
    numel = sum(p.numel() for p in student.parameters())
    timings = allreduce_seconds(numel)
    one = statistics.median(r["student_seconds"] for r in runs[1])
    two = statistics.median(r["student_seconds"] for r in runs[2])
    steps = runs[2][0]["student_steps"]
    print(f"student stage, median of {args.reps}: 1 process x 2 threads {one:.2f} s, "
          f"2 ranks x 1 thread {two:.2f} s, ratio {two / one:.3f} ({one / two:.2f}x throughput)")
    print(f"launch (to the first stage start), median: 1 process "
          f"{statistics.median(r['to_first_stage_seconds'] for r in runs[1]):.2f} s, 2 ranks "
          f"{statistics.median(r['to_first_stage_seconds'] for r in runs[2]):.2f} s")
    grads, flag = timings["gradients"], timings["stop_flag"]
    print(f"all-reduce (2 gloo ranks, 1 thread each): {numel:,} gradient floats {grads * 1e6:.0f} us, "
          f"stop flag {flag * 1e6:.0f} us; x {steps} student steps = {steps * grads:.2f} s + "
          f"{steps * flag:.2f} s ({(steps * (grads + flag)) / two:.0%} of the 2-rank student stage)")
    print("load after:", uptime())


if __name__ == "__main__":
    main()
