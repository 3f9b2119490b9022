"""Prometheus metrics from a real uvicorn API and a real Celery worker, scraped over HTTP."""

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.auth import create_api_key
from app.client import Client
from app.config import Settings
from app.db import session_scope
from tests.conftest import tiny_spec
from tests.procs import (
    api_argv,
    env_for,
    free_port,
    running,
    wait_http,
    wait_until,
    worker_argv,
)

pytestmark = pytest.mark.slow


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return {(sample name, sorted labels): value} of one scrape, parsed by prometheus_client."""
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _key(settings: Settings) -> str:
    with session_scope(settings.resolved_database_url) as db:
        return create_api_key(db=db, tenant_name="acme")[1]


def test_api_and_worker_metrics_follow_a_real_job(settings: Settings, tmp_path: Path, broker_env: dict) -> None:
    key = _key(settings)
    port, worker_port = free_port(), free_port()
    env = env_for(settings, DISTILLERY_WORKER_METRICS_PORT=str(worker_port), **broker_env)
    api_metrics, worker_metrics = f"http://127.0.0.1:{port}/metrics", f"http://127.0.0.1:{worker_port}/metrics"
    with running(api_argv(port), env=env, log=tmp_path / "api.log"), \
            running(worker_argv("metrics"), env=env, log=tmp_path / "worker.log") as worker:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        wait_http(worker_metrics)
        before, worker_before = scrape(api_metrics), scrape(worker_metrics)
        assert value(before, "distillery_jobs", status="succeeded") == 0
        assert value(worker_before, "distillery_worker_jobs_total", outcome="succeeded") == 0
        with Client(f"http://127.0.0.1:{port}", key) as client:
            job = client.wait(client.submit(tiny_spec()).id, poll=0.3, timeout=180)
            assert job.status == "succeeded", worker.output()[-3000:]
            results = client.results(job.id)
            for _ in range(3):
                client.job(job.id)
        after = scrape(api_metrics)
        route = "/v1/jobs/{job_id}"
        # at least the three GETs above (the client's polling adds more); never the raw path
        assert value(after, "distillery_http_requests_total", method="GET", route=route, status="200") \
            >= value(before, "distillery_http_requests_total", method="GET", route=route, status="200") + 3
        assert value(after, "distillery_http_requests_total", method="POST", route="/v1/jobs", status="201") == 1
        assert not any(job.id in str(labels) for _, labels in after)
        assert value(after, "distillery_http_request_duration_seconds_count", method="POST", route="/v1/jobs") == 1
        assert value(after, "distillery_jobs", status="succeeded") == 1
        assert value(after, "distillery_jobs", status="queued") == 0
        assert ("distillery_queue_depth", ()) in after
        assert value(after, "distillery_validator_processes", state="alive") >= 1  # the submit's dry run used it
        # an unknown path is one label value, whatever was asked for
        httpx.get(f"http://127.0.0.1:{port}/no/such/{job.id}")
        assert value(scrape(api_metrics), "distillery_http_requests_total", method="GET", route="<unmatched>",
                     status="404") == 1

        # the worker ran the job in a pool child; its main process serves what the child wrote
        work = wait_until(lambda: (s := scrape(worker_metrics)) and
                          value(s, "distillery_worker_jobs_total", outcome="succeeded") == 1 and s,
                          timeout=30, what="the worker's job count")
        stages = results["stages"]
        assert sum(value(work, "distillery_worker_stage_duration_seconds_count", stage=k)
                   for k in ("teacher", "student", "baseline")) == len(stages)
        assert value(work, "distillery_worker_epoch_duration_seconds_count", stage="student") == \
            next(s["epochs"] for s in stages if s["name"] == "student")
        assert value(work, "distillery_worker_rows_per_second", stage="student") > 0
        assert value(work, "distillery_worker_teacher_cache_total", result="miss") == 1  # one teacher, first run
        # the child that ran the job has exited: no job is current any more
        wait_until(lambda: not any(v for (n, _), v in scrape(worker_metrics).items()
                                   if n == "distillery_worker_current_job"), timeout=30, what="no current job")


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_metrics_token_when_set(settings: Settings, tmp_path: Path) -> None:
    key = _key(settings)
    port = free_port()
    env = env_for(settings, DISTILLERY_METRICS_TOKEN="scrape-token-123")
    with running(api_argv(port), env=env, log=tmp_path / "api.log"):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/metrics"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {key}"}):
            refused = httpx.get(url, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["content-type"] == "application/problem+json"
        assert scrape(url, Authorization="Bearer scrape-token-123")


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_metrics_need_no_key_by_default(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    with running(api_argv(port), env=env_for(settings), log=tmp_path / "api.log"):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        assert ("distillery_jobs", (("status", "running"),)) in scrape(f"http://127.0.0.1:{port}/metrics")


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_several_uvicorn_workers_add_up(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    folder = tmp_path / "prom"
    folder.mkdir()
    env = env_for(settings, PROMETHEUS_MULTIPROC_DIR=str(folder))
    with running([*api_argv(port), "--workers", "2"], env=env, log=tmp_path / "api.log") as api:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        # both workers must be serving before the count starts
        wait_until(lambda: api.output().count("Application startup complete") >= 2, timeout=60,
                   what="two uvicorn workers")
        base = value(scrape(f"http://127.0.0.1:{port}/metrics"), "distillery_http_requests_total", method="GET",
                     route="/healthz", status="200")
        for _ in range(40):  # new connections: spread over both workers
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        pids = {p.name.rsplit("_", 1)[-1] for p in folder.glob("counter_*.db")}
        assert len(pids) >= 2, api.output()
        for _ in range(4):  # whichever worker answers, it reports both workers' requests
            samples = scrape(f"http://127.0.0.1:{port}/metrics")
            assert value(samples, "distillery_http_requests_total", method="GET", route="/healthz",
                         status="200") == base + 40
