"""Many SSE streams over real HTTP (uvicorn): same events in order on every stream of a job, status
requests answered promptly meanwhile, and the per-tenant cap of open streams (429 + Retry-After)."""

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.auth import create_api_key
from app.config import Settings
from app.db import session_scope
from app.services.lifecycle import claim_job, finish_job, record_progress
from tests.conftest import tiny_spec
from tests.procs import api_server

pytestmark = pytest.mark.slow

# 60 streams opened at once: more requests than the threadpool has tokens, which deadlocked with
# the connection pool when the job lookup held a connection across two threadpool hops.
JOBS, STREAMS_PER_JOB, EPOCHS = 4, 15, 12
CAP = JOBS * STREAMS_PER_JOB


@dataclass
class Server:
    url: str
    keys: dict[str, str]
    settings: Settings


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    with session_scope(settings.resolved_database_url) as db:
        keys = {name: create_api_key(db=db, tenant_name=name)[1] for name in ("acme", "globex")}
    with api_server(settings, tmp_path / "api.log", DISTILLERY_MAX_STREAMS_PER_TENANT=str(CAP),
                    DISTILLERY_RATE_LIMIT="", DISTILLERY_MAX_ACTIVE_JOBS_PER_TENANT="50") as url:
        yield Server(url, keys, settings)


@dataclass
class Reader:
    """One SSE stream read in the background: its messages (id, event, data) and how it ended."""

    job_id: str
    headers: dict[str, str]
    messages: list[tuple[int, str, str]] = field(default_factory=list)
    status: int | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False

    async def run(self, http: httpx.AsyncClient) -> None:
        async with http.stream("GET", f"/v1/jobs/{self.job_id}/events/stream", headers=self.headers) as r:
            self.status = r.status_code
            self.opened.set()
            if r.status_code != 200:
                return
            fields: dict[str, str] = {}
            async for line in r.aiter_lines():
                if not line:
                    if "id" in fields:
                        self.messages.append((int(fields["id"]), fields["event"], fields["data"]))
                    fields = {}
                elif not line.startswith(":") and ": " in line:
                    name, value = line.split(": ", 1)
                    fields[name] = value
        self.finished = True  # the server ended the stream


def _submit(http: httpx.Client, key: str, name: str) -> str:
    r = http.post("/v1/jobs", json=tiny_spec(name=name), headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _play_worker(settings: Settings, job_ids: list[str], step_seconds: float) -> None:
    """Write what a worker writes (claim, one event per epoch, the final event), jobs interleaved."""
    url = settings.resolved_database_url
    with session_scope(url) as db:
        for job_id in job_ids:
            assert claim_job(db=db, job_id=job_id, owner="test-worker") is not None
        for epoch in range(1, EPOCHS + 1):
            for job_id in job_ids:
                record_progress(db=db, job_id=job_id, owner="test-worker", stage="student", progress=epoch / EPOCHS,
                                metrics={"epoch": epoch}, event_kind="epoch", event_data={"epoch": epoch})
            time.sleep(step_seconds)
        for job_id in job_ids:
            assert finish_job(db=db, job_id=job_id, owner="test-worker", status="succeeded", results={})


async def _statuses(http: httpx.AsyncClient, job_ids: list[str], stop: asyncio.Event) -> list[tuple[int, float]]:
    """GET each job's status in turn, 10 per second, until told to stop: (status code, seconds)."""
    answers = []
    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        r = await http.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}", timeout=20)
        answers.append((r.status_code, time.perf_counter() - t0))
        i += 1
        await asyncio.sleep(0.1)
    return answers


async def _scenario(server: Server) -> None:
    acme = {"Authorization": f"Bearer {server.keys['acme']}"}
    globex = {"Authorization": f"Bearer {server.keys['globex']}"}
    with httpx.Client(base_url=server.url, timeout=120) as sync_http:
        job_ids = [_submit(sync_http, server.keys["acme"], f"fanout-{i}") for i in range(JOBS)]
        other_job = _submit(sync_http, server.keys["globex"], "other-tenant")
    limits = httpx.Limits(max_connections=CAP + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=httpx.Timeout(30, read=60)) as http, \
            httpx.AsyncClient(base_url=server.url, headers=acme, timeout=30) as status_http:
        readers = [Reader(job_id, acme) for job_id in job_ids for _ in range(STREAMS_PER_JOB)]
        tasks = [asyncio.create_task(r.run(http)) for r in readers]
        await asyncio.wait_for(asyncio.gather(*(r.opened.wait() for r in readers)), 60)
        assert {r.status for r in readers} == {200}
        # Each stream has seen the job's first event ("queued"): all are live before the worker starts.
        deadline = time.monotonic() + 30
        while not all(r.messages for r in readers) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert all(r.messages and r.messages[0][:2] == (1, "queued") for r in readers)

        over = await http.get(f"/v1/jobs/{job_ids[0]}/events/stream", headers=acme)
        assert over.status_code == 429 and over.headers["content-type"].startswith("application/problem+json")
        assert int(over.headers["Retry-After"]) >= 1 and over.json()["code"] == "too_many_streams"
        other = Reader(other_job, globex)  # the cap is per tenant: globex still gets a stream
        other_task = asyncio.create_task(other.run(http))
        await asyncio.wait_for(other.opened.wait(), 30)
        assert other.status == 200
        other_task.cancel()

        stop = asyncio.Event()
        status_task = asyncio.create_task(_statuses(status_http, job_ids, stop))
        worker = asyncio.create_task(asyncio.to_thread(_play_worker, server.settings, job_ids, 0.15))
        # Half way, one stream of job 0 leaves and a new one resumes from event 2 in its slot.
        await asyncio.sleep(0.15 * EPOCHS / 2)
        tasks[0].cancel()
        late = Reader(job_ids[0], {**acme, "Last-Event-ID": "2"})
        for _ in range(50):  # the slot comes back once the server has seen the disconnect
            late.opened.clear()
            late_task = asyncio.create_task(late.run(http))
            await asyncio.wait_for(late.opened.wait(), 30)
            if late.status == 200:
                break
            await late_task
            await asyncio.sleep(0.1)
        assert late.status == 200
        await worker
        await asyncio.wait_for(asyncio.gather(*tasks[1:], late_task), 60)
        stop.set()
        answers = await status_task

    final = 3 + EPOCHS  # queued, started, one per epoch, succeeded
    for job_id in job_ids:
        streams = [r for r in readers[1:] if r.job_id == job_id]
        assert all(r.finished for r in streams)
        first = streams[0].messages
        assert [m[0] for m in first] == list(range(1, final + 1))
        assert first[-1][1] == "succeeded" and json.loads(first[-1][2])["data"] == {"status": "succeeded"}
        assert all(r.messages == first for r in streams)  # the same events, in the same order, on every stream
    assert [m[0] for m in late.messages] == list(range(3, final + 1)) and late.finished
    assert len(answers) >= 10 and {code for code, _ in answers} == {200}
    slowest = max(seconds for _, seconds in answers)
    assert slowest < 2.0, f"a status request took {slowest:.2f} s with {CAP} streams open"


def test_sixty_streams_on_four_jobs_share_feeds_and_leave_status_prompt(server: Server) -> None:
    asyncio.run(_scenario(server))
