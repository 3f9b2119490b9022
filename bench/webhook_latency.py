"""Webhook delivery latency: job events committed -> signed POST received by a real receiver process.

    python -m bench.webhook_latency --jobs 50 [--backend embedded|postgres]

Starts a webhook worker (threads, as `distillery worker --webhooks`) and the test receiver; drives
each job row through claim_job and finish_job (two events each); prints the latency from the event's
timestamp to its arrival (p50, p95, max) and the deliveries per second. Nothing trains.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from app.cli import run_migrations, webhook_worker_argv
from app.config import Settings, get_settings
from tests.procs import free_port, redis_server, running, wait_until

RECEIVER = Path(__file__).resolve().parent.parent / "tests" / "webhooks" / "receiver.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--backend", choices=["embedded", "postgres"], default="embedded")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update({"DISTILLERY_DATA_DIR": str(tmp / "data"), "DISTILLERY_WEBHOOK_ALLOW_PRIVATE": "true",
                "PYTHONUNBUFFERED": "1"})
    redis = None
    if args.backend == "postgres":
        from tests.conftest import _pg_database

        databases = _pg_database()
        env["DISTILLERY_DATABASE_URL"] = next(databases)
        redis_port = free_port()
        redis = redis_server(redis_port, tmp / "redis.log")
        env["DISTILLERY_BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    os.environ.update({k: v for k, v in env.items() if k.startswith("DISTILLERY_")})
    get_settings.cache_clear()
    settings = get_settings()
    settings.data_dir.mkdir(parents=True)
    run_migrations(settings.resolved_database_url)
    try:
        run(settings, env, tmp, args.jobs)
    finally:
        if redis is not None:
            redis.terminate()


def run(settings: Settings, env: dict[str, str], tmp: Path, jobs: int) -> None:
    from app.auth import create_api_key
    from app.db import session_scope
    from app.models import Job
    from app.services.lifecycle import claim_job, finish_job
    from app.webhooks.service import create_endpoint

    port = free_port()
    with session_scope(settings.resolved_database_url) as db:
        key, _ = create_api_key(db=db, tenant_name="bench")
        endpoint = create_endpoint(db=db, tenant=key.tenant, url=f"http://127.0.0.1:{port}/hooks",
                                   event_types=["job.started", "job.succeeded"], settings=settings)
        secret, tenant_id = endpoint.secret, key.tenant_id
        ids = []
        for n in range(jobs):
            job = Job(tenant_id=tenant_id, name=f"bench-{n}", spec={"tasks": []}, spec_sha256="0" * 64)
            db.add(job)
            db.flush()
            ids.append(job.id)
        db.commit()
    log = tmp / "received.jsonl"
    receiver = [sys.executable, str(RECEIVER), "--port", str(port), "--secret", secret, "--log", str(log)]
    with running(receiver, env=env, log=tmp / "receiver.out"), \
            running(webhook_worker_argv("INFO"), env=env, log=tmp / "worker.log") as worker:
        wait_until(lambda: " ready." in worker.output(), timeout=120, what="the worker")
        started = time.time()
        for job_id in ids:
            with session_scope(settings.resolved_database_url) as db:
                claim_job(db=db, job_id=job_id, owner="bench")
                finish_job(db=db, job_id=job_id, owner="bench", status="succeeded")
        wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2 * jobs, timeout=300,
                   what="every delivery")
        elapsed = time.time() - started
    records = [json.loads(line) for line in log.read_text().splitlines()]
    latencies = sorted(r["received_at"] - datetime.fromisoformat(r["body"]["timestamp"]).timestamp() for r in records)
    assert all(r["signature_ok"] for r in records)
    print(json.dumps({"backend": settings.resolved_broker_url.split(":")[0], "deliveries": len(records),
                      "p50_ms": round(1000 * statistics.median(latencies), 1),
                      "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
                      "max_ms": round(1000 * latencies[-1], 1),
                      "per_second": round(len(records) / elapsed, 1)}))


if __name__ == "__main__":
    main()
