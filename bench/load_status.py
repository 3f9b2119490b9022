"""Load: 50 clients poll a training job's status for 60 s while a job is submitted every second.

    .venv/bin/python bench/load_status.py [--clients 50] [--seconds 60] [--backend postgres|embedded]

Reports requests/s, p50/p99 latency of GET /v1/jobs/{id}, POST /v1/jobs p50/p99, and errors.
The per-key rate limit and the active-job cap are raised for the run (they would answer 429 by design).
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._stack import stack  # noqa: E402
from tests.conftest import tiny_spec  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(url: str, key: str, clients: int, seconds: float) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as http:
        training = (await http.post("/v1/jobs", json=tiny_spec(training={"epochs": 400, "batch_size": 64,
                                                                          "lr": 0.003, "seed": 0}))).json()
        poll_latency: list[float] = []
        submit_latency: list[float] = []
        errors: list[str] = []
        stop_at = time.perf_counter() + seconds

        async def poller() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = await http.get(f"/v1/jobs/{training['id']}")
                    if r.status_code != 200:
                        errors.append(f"GET {r.status_code}")
                except httpx.HTTPError as exc:
                    errors.append(f"GET {type(exc).__name__}")
                poll_latency.append(time.perf_counter() - t0)

        async def submitter() -> None:
            i = 0
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/jobs", json={**tiny_spec(), "name": f"load-{i}"})
                    if r.status_code != 201:
                        errors.append(f"POST {r.status_code}")
                except httpx.HTTPError as exc:
                    errors.append(f"POST {type(exc).__name__}")
                submit_latency.append(time.perf_counter() - t0)
                i += 1
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))

        started = time.perf_counter()
        await asyncio.gather(submitter(), *(poller() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        status = (await http.get(f"/v1/jobs/{training['id']}")).json()
        return {
            "clients": clients, "seconds": round(elapsed, 1), "status_requests": len(poll_latency),
            "status_rps": round(len(poll_latency) / elapsed, 1),
            "status_p50_ms": round(1000 * statistics.median(poll_latency), 1),
            "status_p99_ms": round(1000 * percentile(poll_latency, 0.99), 1),
            "submits": len(submit_latency), "submit_p50_ms": round(1000 * statistics.median(submit_latency), 1),
            "submit_p99_ms": round(1000 * percentile(submit_latency, 0.99), 1),
            "errors": len(errors), "error_kinds": sorted(set(errors)),
            "training_job_progress": round(status["progress"], 3), "training_job_status": status["status"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--backend", choices=["postgres", "embedded"], default="postgres")
    parser.add_argument("--api-workers", type=int, default=1)
    args = parser.parse_args()
    env = {"DISTILLERY_RATE_LIMIT": "", "DISTILLERY_MAX_ACTIVE_JOBS_PER_TENANT": "100000"}
    with stack(backend=args.backend, api_workers=args.api_workers, extra_env=env) as s:
        result = asyncio.run(run(s.url, s.key, args.clients, args.seconds))
    result.update(backend=args.backend, api_workers=args.api_workers)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
