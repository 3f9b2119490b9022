"""Queue: N small jobs submitted at once to one worker (concurrency 1); all must succeed.

With one worker, job k's queued→running time includes waiting for the jobs before it, so the
queue's own latency is reported as:
  (a) dispatch gap = started_at(k) − finished_at(k−1), for every job after the first (ordered by
      start): the time from one job's end to the next one's claim while work is waiting;
  (b) queued→running of the first job of the burst, and of ``--idle-probes`` jobs each submitted
      to an idle worker after the burst (its median);
  (c) total wall from the first submit to the last job's end, and jobs per minute.
Job: ``tests.conftest.tiny_spec`` with 1 teacher epoch and 1 student epoch, no baseline (digits-mt,
mlp teacher [64], student trunk [16]). One warm-up job runs to its end before the burst (worker
ready, teacher cache filled: every burst job is a cache hit).

    .venv/bin/python bench/queue_throughput.py [--jobs 100] [--backend postgres|embedded|both]
"""

import argparse
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import stack  # noqa: E402
from bench.load_status import percentile  # noqa: E402
from tests.conftest import tiny_spec  # noqa: E402

SMALL_JOB = tiny_spec(training={"epochs": 1, "batch_size": 256, "lr": 0.003, "seed": 0}, baseline=False)
SMALL_JOB["teachers"][0]["source"]["train"]["epochs"] = 1
ENDED = ("succeeded", "failed", "cancelled")


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _wait(http: httpx.Client, ids: list[str], poll: float) -> list[dict]:
    while True:
        rows = [http.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
        if all(r["status"] in ENDED for r in rows):
            return rows
        time.sleep(poll)


def _stats(values: list[float]) -> dict:
    return {"p50": round(statistics.median(values), 3), "p95": round(percentile(values, 0.95), 3),
            "max": round(max(values), 3), "sum": round(sum(values), 1)}


def run(backend: str, jobs: int, idle_probes: int) -> dict:
    env = {"DISTILLERY_RATE_LIMIT": "", "DISTILLERY_MAX_ACTIVE_JOBS_PER_TENANT": str(jobs + 10)}
    with stack(backend=backend, extra_env=env) as s:
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=60) as http:
            # One job first, waited for: the worker is up (its preload done), the API's validator
            # has imported torch, and the teacher cache is filled, so the burst measures the queue.
            (warm,) = _wait(http, [http.post("/v1/jobs", json={**SMALL_JOB, "name": "warm-up"}).json()["id"]], 0.2)
            assert warm["status"] == "succeeded", warm
            started = time.perf_counter()
            ids = [http.post("/v1/jobs", json={**SMALL_JOB, "name": f"q{i}"}).json()["id"] for i in range(jobs)]
            submitted = time.perf_counter() - started
            rows = _wait(http, ids, 1.0)
            elapsed = time.perf_counter() - started
            idle: list[float] = []
            for i in range(idle_probes):  # one at a time, each to a worker with nothing else to do
                time.sleep(2.0)
                job_id = http.post("/v1/jobs", json={**SMALL_JOB, "name": f"idle{i}"}).json()["id"]
                (row,) = _wait(http, [job_id], 0.2)
                idle.append(_ts(row["started_at"]) - _ts(row["created_at"]))
    ordered = sorted(rows, key=lambda r: _ts(r["started_at"]))
    gaps = [_ts(cur["started_at"]) - _ts(prev["finished_at"]) for prev, cur in zip(ordered, ordered[1:])]
    run_seconds = [_ts(r["finished_at"]) - _ts(r["started_at"]) for r in rows]
    span = _ts(ordered[-1]["finished_at"]) - _ts(ordered[0]["created_at"])
    return {
        "backend": backend, "jobs": jobs, "succeeded": sum(r["status"] == "succeeded" for r in rows),
        "submit_all_seconds": round(submitted, 2),
        "total_seconds": round(span, 1), "jobs_per_minute": round(60 * jobs / span, 1),
        "total_seconds_incl_polling": round(elapsed, 1),
        "dispatch_gap_s": _stats(gaps),
        "first_queued_to_running_s": round(_ts(ordered[0]["started_at"]) - _ts(ordered[0]["created_at"]), 3),
        "idle_queued_to_running_s": [round(v, 3) for v in idle],
        "job_run_s": _stats(run_seconds),
        "busy_fraction": round(sum(run_seconds) / span, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--idle-probes", type=int, default=3)
    parser.add_argument("--backend", choices=["postgres", "embedded", "both"], default="both")
    args = parser.parse_args()
    backends = ["postgres", "embedded"] if args.backend == "both" else [args.backend]
    print(json.dumps([run(b, args.jobs, args.idle_probes) for b in backends], indent=2), flush=True)


if __name__ == "__main__":
    main()
