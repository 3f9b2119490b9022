"""Webhook fixtures: a real receiver process, a real webhook worker, API keys, and job rows to drive."""

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.auth import create_api_key
from app.config import Settings, get_settings
from app.db import session_scope
from app.models import Job
from app.training.spec import JobSpec, spec_sha256
from tests.conftest import tiny_spec
from tests.procs import Proc, env_for, running, wait_until

RECEIVER = Path(__file__).with_name("receiver.py")
# Short retries so a test sees several attempts in seconds; the sweep every 2 s.
FAST_RETRIES = {"DISTILLERY_WEBHOOK_ALLOW_PRIVATE": "true", "DISTILLERY_WEBHOOK_RETRY_BASE_SECONDS": "0.3",
                "DISTILLERY_WEBHOOK_RETRY_MAX_SECONDS": "2", "DISTILLERY_WEBHOOK_TIMEOUT_SECONDS": "3",
                "DISTILLERY_WEBHOOK_SWEEP_INTERVAL_SECONDS": "2"}


def webhook_worker_argv(name: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "distillery.webhooks",
            "-P", "threads", "-c", "4", "--loglevel", "INFO", "-n", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]


@pytest.fixture
def hook_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The test's settings with a private receiver allowed (and fast retries), here and in children."""
    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def api(hook_settings: Settings) -> TestClient:
    # No lifespan: these tests submit no spec, so the validator process is not needed.
    from app.main import create_app

    return TestClient(create_app(), raise_server_exceptions=False)


def api_key(settings: Settings, tenant: str) -> tuple[dict[str, str], str]:
    """(Authorization header, tenant id) of a new key."""
    with session_scope(settings.resolved_database_url) as db:
        key, plain = create_api_key(db=db, tenant_name=tenant)
        return {"Authorization": f"Bearer {plain}"}, key.tenant_id


def insert_job(settings: Settings, tenant_id: str, **spec_overrides: Any) -> str:
    """A queued job row, as POST /v1/jobs stores it (without its dry run)."""
    spec = JobSpec.model_validate(tiny_spec(**spec_overrides))
    with session_scope(settings.resolved_database_url) as db:
        job = Job(tenant_id=tenant_id, name=spec.name, spec=spec.model_dump(mode="json"),
                  spec_sha256=spec_sha256(spec), status="queued")
        db.add(job)
        db.commit()
        return job.id


class Receiver:
    def __init__(self, log: Path, port: int):
        self.log, self.port = log, port
        self.url = f"http://127.0.0.1:{port}/hooks"

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Callable[..., AbstractContextManager[Receiver]]]:
    """Start a receiver process: ``with receiver(port, secret, fail_first=0) as r: ...``."""

    @contextmanager
    def start(port: int, secret: str, *, fail_first: int = 0, log: Path | None = None) -> Iterator[Receiver]:
        log = log or tmp_path / f"receiver-{port}.jsonl"
        argv = [sys.executable, str(RECEIVER), "--port", str(port), "--secret", secret, "--log", str(log),
                "--fail-first", str(fail_first)]
        with running(argv, env={"PATH": "/usr/bin:/bin"}, log=tmp_path / f"receiver-{port}.out"):
            wait_until(lambda: _listening(port), timeout=15, what=f"receiver on {port}")
            yield Receiver(log, port)

    yield start


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def webhook_worker(hook_settings: Settings, tmp_path: Path) -> Iterator[Proc]:
    """A real Celery worker on the webhook queue (threads pool), ready before the test goes on."""
    env = env_for(hook_settings, **FAST_RETRIES)
    with running(webhook_worker_argv("hooks"), env=env, log=tmp_path / "webhook-worker.log") as proc:
        wait_until(lambda: " ready." in proc.output() or proc.popen.poll() is not None, timeout=90,
                   what="the webhook worker")
        assert proc.popen.poll() is None, proc.output()
        yield proc

