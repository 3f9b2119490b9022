"""Queue: 100 small jobs submitted at once to one worker; all must succeed. Reports the dispatch
latency (a job's start minus the moment the worker became free for it, or minus its submission for
the first), jobs per minute, with Redis + PostgreSQL and with the embedded broker.

    .venv/bin/python bench/queue_throughput.py [--jobs 100] [--backend postgres|embedded|both]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import stack  # noqa: E402
from bench.load_status import percentile  # noqa: E402
from tests.conftest import tiny_spec  # noqa: E402

SMALL_JOB = tiny_spec(training={"epochs": 1, "batch_size": 256, "lr": 0.003, "seed": 0}, baseline=False)
SMALL_JOB["teachers"][0]["source"]["train"]["epochs"] = 1


def run(backend: str, jobs: int) -> dict:
    env = {"DISTILLERY_RATE_LIMIT": "", "DISTILLERY_MAX_ACTIVE_JOBS_PER_TENANT": str(jobs + 10)}
    with stack(backend=backend, extra_env=env) as s:
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {s.key}"}, timeout=60) as http:
            started = time.perf_counter()
            ids = [http.post("/v1/jobs", json={**SMALL_JOB, "name": f"q{i}"}).json()["id"] for i in range(jobs)]
            submitted = time.perf_counter() - started
            while True:
                rows = [http.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
                if all(r["status"] in ("succeeded", "failed", "cancelled") for r in rows):
                    break
                time.sleep(1)
            elapsed = time.perf_counter() - started
    from datetime import datetime

    def ts(value: str) -> float:
        return datetime.fromisoformat(value).timestamp()

    ordered = sorted(rows, key=lambda r: ts(r["started_at"]))
    created = {r["id"]: ts(r["created_at"]) for r in rows}
    dispatch = [ts(ordered[0]["started_at"]) - created[ordered[0]["id"]]]
    for previous, current in zip(ordered, ordered[1:]):
        free_at = max(ts(previous["finished_at"]), created[current["id"]])
        dispatch.append(ts(current["started_at"]) - free_at)
    run_seconds = [ts(r["finished_at"]) - ts(r["started_at"]) for r in rows]
    return {
        "backend": backend, "jobs": jobs, "succeeded": sum(r["status"] == "succeeded" for r in rows),
        "submit_all_seconds": round(submitted, 2), "total_seconds": round(elapsed, 1),
        "jobs_per_minute": round(60 * jobs / elapsed, 1),
        "dispatch_p50_s": round(statistics.median(dispatch), 3), "dispatch_p99_s": round(percentile(dispatch, 0.99), 3),
        "dispatch_max_s": round(max(dispatch), 3), "job_run_p50_s": round(statistics.median(run_seconds), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--backend", choices=["postgres", "embedded", "both"], default="both")
    args = parser.parse_args()
    backends = ["postgres", "embedded"] if args.backend == "both" else [args.backend]
    print(json.dumps([run(b, args.jobs) for b in backends], indent=2))


if __name__ == "__main__":
    main()
