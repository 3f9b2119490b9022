"""Memory: peak RSS of the MNIST-1D 50k-transfer job in a child process; teacher-cache memory map.

    .venv/bin/python -m bench.memory [--epochs 5] [--memmap-bytes 1048576]

Job 1 runs in a fresh child process (cache miss) and job 2 (same teacher and data, cache hit) in
another, with the cache's memory-map threshold forced down to --memmap-bytes; while job 2 runs the
parent reads /proc/<pid>/maps and lists the mapped cache .npy files. Peak RSS per child comes from
its own resource.getrusage(RUSAGE_SELF).ru_maxrss, printed by the child.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, torch
from pathlib import Path
from app.training import cache
from app.training.loop import train
from app.training.spec import JobSpec
spec, workdir, cache_dir, memmap_bytes, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
if memmap_bytes:
    cache.TeacherOutputCache.__init__.__kwdefaults__["memmap_bytes"] = memmap_bytes
results = train(JobSpec.model_validate(spec), Path(workdir), cache_dir=Path(cache_dir)).results
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "teacher_cache": results["teacher_cache"],
                  "accuracy": results["tasks"]["digit"]["student"],
                  "total_s": results["timing"]["total_seconds"]}))
"""


def run_child(args: list, watch: str | None) -> tuple[dict, list[str]]:
    """Run one job in a child; return its report and the cache files it had mapped."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                            text=True)
    mapped: set[str] = set()
    while proc.poll() is None:
        if watch:
            try:
                for line in Path(f"/proc/{proc.pid}/maps").read_text().splitlines():
                    if watch in line and line.endswith(".npy"):
                        mapped.add(" ".join(line.split()[i] for i in (0, 1, 5)))
            except OSError:
                pass
        time.sleep(0.05)
    out = proc.stdout.read().strip().splitlines()[-1]
    return json.loads(out), sorted(mapped)


def main() -> None:
    from bench.engine_overhead import MNIST1D

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memmap-bytes", type=int, default=1 << 20)
    args = parser.parse_args()
    spec = json.loads(json.dumps(MNIST1D))
    spec["training"]["epochs"] = args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = str(root / "cache")
        first, _ = run_child([spec, str(root / "job1"), cache, 0, args.threads], None)
        print("job 1 (miss, default threshold):", json.dumps(first), flush=True)
        sizes = {str(p.relative_to(root)): p.stat().st_size for p in (root / "cache").rglob("*.npy")}
        print("cache files (bytes):", json.dumps(sizes, indent=1))
        second, mapped = run_child([spec, str(root / "job2"), cache, args.memmap_bytes, args.threads],
                                   cache)
        print(f"job 2 (hit, memmap threshold {args.memmap_bytes} B):", json.dumps(second))
        print("cache .npy files mapped in job 2's /proc/<pid>/maps:")
        print("\n".join(mapped) or "(none)")


if __name__ == "__main__":
    main()
