"""A burst of authenticated requests larger than the threadpool and the connection pool together.

Each request checks its key in one threadpool hop and then looks the job up (or runs a sync handler)
in a second hop. When the first hop kept its pooled connection while the request waited for a second
threadpool token, a burst filled the threadpool with key checks waiting for a connection, while every
connection was held by a request waiting for a token: nothing moved until the pool timeout (30 s), then
500s. Real uvicorn, both database backends.
"""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.auth import create_api_key
from app.config import Settings
from app.db import session_scope
from tests.conftest import tiny_spec
from tests.procs import api_argv, env_for, free_port, running, wait_http

pytestmark = pytest.mark.slow

# The threadpool has 40 tokens; the PostgreSQL pool 30 connections, the SQLite one 15.
BURST = 240


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    port = free_port()
    env = env_for(settings, DISTILLERY_RATE_LIMIT="")
    with running(api_argv(port), env=env, log=tmp_path / "api.log") as api:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
        yield f"http://127.0.0.1:{port}", key
        assert "Traceback" not in api.output(), api.output()[-3000:]


async def _burst(url: str, key: str, job_id: str) -> tuple[list[int], float]:
    headers = {"Authorization": f"Bearer {key}"}
    paths = [f"/v1/jobs/{job_id}", "/v1/jobs", f"/v1/jobs/{job_id}/events"] * (BURST // 3)
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        started = time.perf_counter()
        answers = await asyncio.gather(*(http.get(path) for path in paths))
        return [r.status_code for r in answers], time.perf_counter() - started


def test_a_burst_of_job_requests_is_answered_without_waiting_on_the_pool(server: tuple[str, str]) -> None:
    url, key = server
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        created = http.post("/v1/jobs", json=tiny_spec(name="burst"))
        assert created.status_code == 201, created.text
    codes, seconds = asyncio.run(_burst(url, key, created.json()["id"]))
    assert codes.count(200) == len(codes), sorted(set(codes))
    # A deadlock shows as the 30 s pool timeout; the burst itself takes a few seconds on a busy machine.
    assert seconds < 25, seconds


async def _stalled_uploads(url: str, key: str, count: int) -> list[asyncio.StreamWriter]:
    """Start ``count`` uploads that send their headers and a first chunk, then stall."""
    host, port = url.removeprefix("http://").split(":")
    writers = []
    for _ in range(count):
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write((f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                      "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
                      "--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\ndataset\r\n").encode())
        await writer.drain()
        writers.append(writer)
    return writers


def test_slow_uploads_do_not_hold_the_connections_other_requests_need(server: tuple[str, str]) -> None:
    url, key = server

    async def scenario() -> list[float]:
        writers = await _stalled_uploads(url, key, 40)  # more than the pool keeps (5 SQLite, 10 PostgreSQL)
        await asyncio.sleep(1.0)  # every upload has passed its key check and waits for its body
        waits = []
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            for _ in range(5):
                started = time.perf_counter()
                assert (await http.get("/v1/jobs")).status_code == 200
                waits.append(time.perf_counter() - started)
        for writer in writers:
            writer.close()
        return waits

    waits = asyncio.run(scenario())
    assert max(waits) < 5, waits  # a held permit would have kept them waiting until the uploads ended
