"""Faults done for real: a broker killed and restarted, the database restarted, the API restarted,
a running job cancelled on a real worker. Each with real processes."""

import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.conftest import tiny_spec
from tests.procs import (api_argv, env_for, free_port, redis_server, running, wait_http, wait_until,
                         worker_argv)
from tests.worker.test_run_job import events, in_student_stage, load, long_spec, make_job

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_redis_killed_and_restarted_mid_job(settings: Settings, tmp_path: Path, record_property) -> None:  # noqa: ANN001
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    redis = redis_server(port, tmp_path / "redis1.log")
    try:
        wait_until(lambda: _ping(port), timeout=10, what="private redis")
        local = settings.model_copy(update={"broker_url": broker, "resend_queued_after_seconds": 5.0})
        env = env_for(local, DISTILLERY_RESEND_QUEUED_AFTER_SECONDS="5")
        running_job = make_job(local, long_spec(), send=True)
        waiting_job = make_job(local, tiny_spec(), send=True)  # its message dies with the broker
        with running(worker_argv("redis-fault"), env=env, log=tmp_path / "worker.log"):
            wait_until(lambda: in_student_stage(local, running_job, epoch=2), timeout=120, what="student stage")
            redis.send_signal(signal.SIGKILL)
            redis.wait(timeout=10)
            time.sleep(2)
            redis = redis_server(port, tmp_path / "redis2.log")  # empty: every message is gone
            restarted = time.monotonic()
            for job_id in (running_job, waiting_job):
                wait_until(lambda j=job_id: load(local, j).status == "succeeded", timeout=180, what=f"{job_id} success")
                record_property(f"redis_restart_to_{'running' if job_id == running_job else 'lost'}_job_done_s",
                                round(time.monotonic() - restarted, 1))
        assert load(local, running_job).attempt == 1  # the running job never stopped
        assert "resent" in [e.kind for e in events(local, waiting_job)]
    finally:
        redis.kill()
        redis.wait(timeout=10)


def _ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.exceptions.ConnectionError:
        return False


def _pg_restart() -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, timeout=60)


@pytest.mark.skipif(shutil.which("pg_ctlcluster") is None, reason="needs a local PostgreSQL cluster to restart")
@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_postgres_restarted_mid_job(settings: Settings, tmp_path: Path, record_property) -> None:  # noqa: ANN001
    job_id = make_job(settings, long_spec(), send=True)
    with running(worker_argv("pg-fault"), env=env_for(settings), log=tmp_path / "worker.log") as worker:
        wait_until(lambda: in_student_stage(settings, job_id, epoch=2), timeout=120, what="student stage")
        restart_started = time.monotonic()
        _pg_restart()
        record_property("pg_restart_s", round(time.monotonic() - restart_started, 1))
        wait_until(lambda: _status_or_none(settings, job_id) == "succeeded", timeout=180, what="job success")
    from app.db import get_engine

    get_engine(settings.resolved_database_url).dispose()  # this process's pooled connections died too
    job = load(settings, job_id)
    assert job.attempt == 1 and job.status == "succeeded"
    assert "failed (attempt" in worker.output() or "will retry" in worker.output()  # writes did hit the outage


def _status_or_none(settings: Settings, job_id: str) -> str | None:
    try:
        return load(settings, job_id).status
    except Exception:  # the test's own connection during the restart
        return None


def test_api_restart_loses_nothing_and_idempotent_retry_returns_same_job(settings: Settings, tmp_path: Path) -> None:
    from app.auth import create_api_key
    from app.db import session_scope

    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "retry-me"}
    port = free_port()
    env = env_for(settings)
    with running(api_argv(port), env=env, log=tmp_path / "api1.log") as api:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        first = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", json=tiny_spec(), headers=headers, timeout=60).json()
        api.signal_group(signal.SIGKILL)
    with running(api_argv(port), env=env, log=tmp_path / "api2.log"):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        again = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", json=tiny_spec(), headers=headers, timeout=60)
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers=headers).json()["data"]
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert [j["id"] for j in listed] == [first["id"]]


def test_cancel_running_job_on_a_real_worker_frees_it_for_the_next(settings: Settings, tmp_path: Path,
                                                                  record_property) -> None:  # noqa: ANN001
    from app.db import session_scope
    from app.models import Job
    from app.services.jobs import request_cancel

    long_job = make_job(settings, long_spec(epochs=300), send=True)
    next_job = make_job(settings, tiny_spec(), send=True)
    with running(worker_argv("cancel"), env=env_for(settings), log=tmp_path / "worker.log"):
        wait_until(lambda: in_student_stage(settings, long_job, epoch=2), timeout=120, what="student stage")
        asked = time.monotonic()
        with session_scope(settings.resolved_database_url) as db:
            request_cancel(db=db, job=db.get(Job, long_job))
        wait_until(lambda: load(settings, long_job).status == "cancelled", timeout=5, interval=0.05,
                   what="cancelled within 5 s")
        stopped_after = time.monotonic() - asked
        wait_until(lambda: load(settings, next_job).status == "succeeded", timeout=120, what="next job")
    assert stopped_after < 5
    record_property("cancel_to_cancelled_s", round(stopped_after, 2))
