"""Teacher-output cache: per-epoch student time with cached teacher outputs vs online KD.

    .venv/bin/python -m bench.teacher_cache [--reps 3] [--threads 1] [--epochs 3] [--transfer 10000]

Teacher: cnn1d [64,64,64] k5 + trunk 128 (~2.0 M MACs/sample), student: MLP [100,100]
(~15 k MACs/sample), i.e. the teacher has >100x the student's FLOPs. Job: MNIST-1D with a generated
transfer set. Online KD = `distillation.online: true` (teacher forward every step). Runs are
interleaved. A second cached job with the same teacher and data (fresh workdir, shared cache dir)
must report cache "hit"; the time saved is the miss job's total minus the hit job's total.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from app.training.loop import train
from app.training.spec import JobSpec
from bench.engine_overhead import MNIST1D


def run(spec: dict[str, Any], workdir: Path, cache: Path) -> dict[str, Any]:
    """Run one job; return results.json."""
    return train(JobSpec.model_validate(spec), workdir, cache_dir=cache).results


def student_epoch_seconds(results: dict[str, Any]) -> float:
    """Return the student stage's seconds per epoch."""
    stage = next(s for s in results["stages"] if s["name"].startswith("student"))
    return stage["seconds"] / stage["epochs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--transfer", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.loads(json.dumps(MNIST1D))
    spec["training"]["epochs"] = args.epochs
    spec["transfer_set"] = {"generate": args.transfer}
    spec["teachers"][0]["source"]["train"]["epochs"] = 1
    online = json.loads(json.dumps(spec))
    online["distillation"]["online"] = True
    cached_s, online_s, misses, hits, metrics = [], [], [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rep in range(args.reps):
            cache = root / f"cache-{rep}"  # fresh per rep: first job misses, second hits
            miss = run(spec, root / f"miss-{rep}", cache)
            hit = run(spec, root / f"hit-{rep}", cache)
            on = run(online, root / f"online-{rep}", root / f"cache-online-{rep}")
            assert miss["teacher_cache"] == {"cnn": "miss"} and hit["teacher_cache"] == {"cnn": "hit"}
            cached_s.append(student_epoch_seconds(hit))
            online_s.append(student_epoch_seconds(on))
            misses.append(miss["timing"]["total_seconds"])
            hits.append(hit["timing"]["total_seconds"])
            metrics = {"cached": miss["tasks"]["digit"]["student"],
                       "cached_second_job": hit["tasks"]["digit"]["student"],
                       "online": on["tasks"]["digit"]["student"],
                       "cache_status": miss["teacher_cache"], "hit_status": hit["teacher_cache"]}
            print(f"rep {rep}: cached {cached_s[-1]:.3f}s/epoch online {online_s[-1]:.3f}s/epoch "
                  f"miss-job {misses[-1]:.2f}s hit-job {hits[-1]:.2f}s {metrics}", flush=True)
    report = {"cached_epoch_s": cached_s, "online_epoch_s": online_s, "miss_total_s": misses,
              "hit_total_s": hits,
              "speedup_median": statistics.median(o / c for o, c in zip(online_s, cached_s)),
              "saved_median_s": statistics.median(m - h for m, h in zip(misses, hits)),
              "metrics_last_rep": metrics}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
