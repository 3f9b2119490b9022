"""Searches over real HTTP (uvicorn, no worker), on both backends: Idempotency-Key on POST /v1/searches, and
the search SSE stream under the tenant's stream cap shared with job streams, holding no pooled connection."""

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.client import Client
from app.config import Settings
from app.db import session_scope
from app.models import Search
from app.services.searches import add_search_event
from tests.conftest import tiny_spec
from tests.procs import api_server
from tests.searches.conftest import tiny_goal

pytestmark = pytest.mark.timeout(300)
# More streams than either backend's pool keeps connections (SQLite 5, PostgreSQL 10): a stream that
# held its request's connection and permit would leave a status request waiting for one.
SEARCH_STREAMS = 12
CAP = SEARCH_STREAMS + 1  # and one job stream: the cap counts both


@dataclass
class Server:
    url: str
    headers: dict[str, str]
    log: Path


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    from app.auth import create_api_key

    with session_scope(settings.resolved_database_url) as db:
        headers = {"Authorization": f"Bearer {create_api_key(db=db, tenant_name='searcher')[1]}"}
    log = tmp_path / "api.log"
    with api_server(settings, log, DISTILLERY_MAX_STREAMS_PER_TENANT=str(CAP), DISTILLERY_RATE_LIMIT="") as url:
        yield Server(url, headers, log)


def test_an_idempotency_key_replays_the_same_search(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as api:
        first = api.post("/v1/searches", json=tiny_goal(), headers={"Idempotency-Key": "goal-1"})
        assert first.status_code == 201, first.text
        again = api.post("/v1/searches", json=tiny_goal(), headers={"Idempotency-Key": "goal-1"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert again.headers["Location"] == f"/v1/searches/{first.json()['id']}"
        other = api.post("/v1/searches", json=tiny_goal(trials=3), headers={"Idempotency-Key": "goal-1"})
        assert other.status_code == 422 and other.headers["content-type"].startswith("application/problem+json")
        assert other.json()["errors"][0]["field"] == "header.Idempotency-Key"
        assert [s["id"] for s in api.get("/v1/searches").json()["data"]] == [first.json()["id"]]
        keyless = [api.post("/v1/searches", json=tiny_goal()).json()["id"] for _ in range(2)]
        assert len({first.json()["id"], *keyless}) == 3  # no key, no replay
    with Client(server.url, server.headers["Authorization"].split()[1]) as client:  # retries under one key
        sent = client.submit_search(tiny_goal(), idempotency_key="goal-2")
        assert client.submit_search(tiny_goal(), idempotency_key="goal-2").id == sent.id


@dataclass
class Reader:
    """One SSE stream read in the background: its (id, event) messages and how it ended."""

    path: str
    headers: dict[str, str]
    messages: list[tuple[int, str]] = field(default_factory=list)
    status: int | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False

    async def run(self, http: httpx.AsyncClient) -> None:
        async with http.stream("GET", self.path, headers=self.headers) as r:
            self.status = r.status_code
            self.opened.set()
            if r.status_code != 200:
                return
            fields: dict[str, str] = {}
            async for line in r.aiter_lines():
                if not line:
                    if "id" in fields:
                        self.messages.append((int(fields["id"]), fields["event"]))
                    fields = {}
                elif not line.startswith(":") and ": " in line:
                    name, value = line.split(": ", 1)
                    fields[name] = value
        self.finished = True


async def _until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _end_search(settings: Settings, search_id: str) -> None:
    """Write what the controller writes at the end: the terminal status and the final event, together."""
    with session_scope(settings.resolved_database_url) as db:
        db.get(Search, search_id).status = "cancelled"
        add_search_event(db=db, search_id=search_id, kind="cancelled", data={})
        db.commit()


async def _streams(server: Server, settings: Settings, search_id: str, job_id: str) -> None:
    limits = httpx.Limits(max_connections=CAP + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, limits=limits,
                                 timeout=httpx.Timeout(30, read=120)) as http:
        path = f"/v1/searches/{search_id}/events/stream"
        readers = [Reader(path, {}) for _ in range(SEARCH_STREAMS)] + [Reader(f"/v1/jobs/{job_id}/events/stream", {})]
        tasks = [asyncio.create_task(r.run(http)) for r in readers]
        await asyncio.wait_for(asyncio.gather(*(r.opened.wait() for r in readers)), 60)
        assert {r.status for r in readers} == {200}
        await _until(lambda: all(r.messages for r in readers), 30, "every stream's first event")
        assert all(r.messages[0] == (1, "queued") for r in readers)

        started = time.monotonic()  # every stream gave its connection and permit back before streaming
        assert (await http.get(f"/v1/searches/{search_id}", timeout=10)).status_code == 200
        assert time.monotonic() - started < 5

        for over_path in (path, f"/v1/jobs/{job_id}/events/stream"):  # one count for both kinds
            over = await http.get(over_path)
            assert over.status_code == 429 and over.headers["content-type"].startswith("application/problem+json")
            assert int(over.headers["Retry-After"]) >= 1 and over.json()["code"] == "too_many_streams"

        assert (await http.post(f"/v1/searches/{search_id}/cancel")).status_code == 200  # event 2
        await _until(lambda: all(len(r.messages) >= 2 for r in readers[:SEARCH_STREAMS]), 30, "event 2")
        tasks[0].cancel()  # a client leaves; its slot comes back once the server sees the disconnect
        late = Reader(path, {"Last-Event-ID": "1"})
        for _ in range(100):
            late.opened.clear()
            late_task = asyncio.create_task(late.run(http))
            await asyncio.wait_for(late.opened.wait(), 30)
            if late.status == 200:
                break
            await late_task
            await asyncio.sleep(0.1)
        assert late.status == 200
        await _until(lambda: late.messages, 30, "the resumed stream's first event")

        await asyncio.to_thread(_end_search, settings, search_id)
        await asyncio.wait_for(asyncio.gather(*tasks[1:SEARCH_STREAMS], late_task), 30)
        for reader in readers[1:SEARCH_STREAMS]:
            assert reader.finished and reader.messages == [(1, "queued"), (2, "cancel_requested"), (3, "cancelled")]
        assert late.finished and late.messages == [(2, "cancel_requested"), (3, "cancelled")]
        job_stream = readers[-1]
        assert not job_stream.finished  # its job is still queued
        assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 200
        await asyncio.wait_for(tasks[-1], 30)
        assert job_stream.finished and job_stream.messages[-1][1] == "cancelled"


def test_search_streams_share_the_tenant_stream_cap_and_hold_no_connection(server: Server, settings: Settings) -> None:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as api:
        search = api.post("/v1/searches", json=tiny_goal())
        assert search.status_code == 201, search.text
        job = api.post("/v1/jobs", json=tiny_spec())
        assert job.status_code == 201, job.text
    asyncio.run(_streams(server, settings, search.json()["id"], job.json()["id"]))
