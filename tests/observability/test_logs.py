"""JSON logs from a real uvicorn API and a real Celery worker: one job followed from request to worker."""

import json
from pathlib import Path

import httpx
import pytest

from app.auth import create_api_key
from app.client import Client
from app.config import Settings
from app.db import session_scope
from tests.conftest import tiny_spec
from tests.procs import api_argv, env_for, free_port, running, wait_http, worker_argv

pytestmark = pytest.mark.slow


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def stray_lines(text: str) -> list[str]:
    """Lines that are not JSON, less the warning multiprocessing's resource tracker (a helper process
    of the validator pool, outside our logging) prints on its own stderr at shutdown."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("{")]
    return [line for line in lines if "resource_tracker" not in line]


def test_one_job_followed_from_api_to_worker(settings: Settings, tmp_path: Path, broker_env: dict) -> None:
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    env = env_for(settings, DISTILLERY_LOG_FORMAT="json", **broker_env)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(api_argv(port), env=env, log=tmp_path / "api.log") as api, \
            running(worker_argv("logs"), env=env, log=tmp_path / "worker.log") as worker:
        wait_http(f"{base}/readyz")
        headers = {"Authorization": f"Bearer {key}"}
        created = httpx.post(f"{base}/v1/jobs", json=tiny_spec(), headers={**headers, "X-Request-ID": "trace-abc.1"}, timeout=120)
        assert created.status_code == 201, created.text
        assert created.headers["X-Request-ID"] == "trace-abc.1"
        job_id = created.json()["id"]
        # an id of our own when the caller sends none, or one that is not an id
        minted = httpx.get(f"{base}/healthz").headers["X-Request-ID"]
        refused = httpx.get(f"{base}/healthz", headers={"X-Request-ID": "a b\tc"}).headers["X-Request-ID"]
        assert len(minted) == 32 and minted != refused and " " not in refused
        with Client(base, key) as client:
            assert client.wait(job_id, poll=0.3, timeout=180).status == "succeeded", worker.output()[-3000:]

    assert not stray_lines(api.output())
    api_records = json_lines(api.output())
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in api_records)
    assert all(r.get("job_id", "absent") is not None for r in api_records)  # no "job_id": null noise
    submit = [r for r in api_records if r.get("request_id") == "trace-abc.1"]
    # the access line and the queueing line of that request, the second naming the job
    assert any("POST /v1/jobs" in r["message"] and r["logger"] == "uvicorn.access" for r in submit)
    assert any(r.get("job_id") == job_id and r["logger"] == "distillery.queue" for r in submit)
    assert any(r.get("request_id") == minted for r in api_records)

    worker_records = json_lines(worker.output())
    mine = [r for r in worker_records if r.get("job_id") == job_id]
    assert any("claimed" in r["message"] for r in mine), worker.output()[-3000:]
    assert all(r.get("job_id") in (None, job_id) for r in worker_records)


def test_json_lines_scrub_keys_tokens_passwords_and_signatures() -> None:
    """A line that would carry a secret (an exception message quoting a URL, a header) loses it."""
    import logging

    from app.observability.logs import JsonFormatter

    secrets = ["dk_AbCdEfGhIjKlMnOp1234", "tok-9f8e7d", "s3cret-Pa55word", "c2lnbmF0dXJl%2Bx", "AKIAEXAMPLE/2026"]
    message = (f"key {secrets[0]} header Authorization: Bearer {secrets[1]} "
               f"db postgresql+psycopg://postgres:{secrets[2]}@db:5432/x presigned "
               f"https://s3.example/b/o?X-Amz-Credential={secrets[4]}&X-Amz-Signature={secrets[3]}&x=1")
    record = logging.makeLogRecord({"name": "t", "levelname": "ERROR", "msg": "%s", "args": (message,)})
    line = JsonFormatter().format(record)
    assert json.loads(line)["message"].startswith("key dk_[redacted]")
    for secret in secrets:
        assert secret not in line, (secret, line)
    assert "postgresql+psycopg://postgres:[redacted]@db:5432/x" in line and "&x=1" in line
