"""A private Redis for the PostgreSQL runs: the shared test Redis may hold other suites' workers."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.config import Settings
from tests.procs import free_port, redis_server


@pytest.fixture
def broker_env(settings: Settings, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Extra environment for the stack's processes: its own redis-server when the backend uses Redis."""
    if not settings.broker_url:
        yield {}
        return
    port = free_port()
    proc = redis_server(port, tmp_path / "redis.log")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield {"DISTILLERY_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
