"""The stream service on a real database: one feed per job, read until its last stream closes, and a
stream that falls behind catches up from the database without losing or repeating an event."""

import asyncio
from collections.abc import AsyncIterator

from app.auth import create_api_key
from app.config import Settings
from app.db import session_scope
from app.models import Job
from app.services.events import add_event
from app.services.lifecycle import claim_job, finish_job, record_progress
from app.services.streams import KEEPALIVE_MESSAGE, RETRY_MESSAGE, StreamRegistry


def _queued_job(settings: Settings) -> tuple[str, str]:
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[0]
        job = Job(tenant_id=key.tenant_id, name="feed", spec={}, spec_sha256="0" * 64)
        db.add(job)
        db.flush()
        add_event(db=db, job_id=job.id, kind="queued")
        db.commit()
        return key.tenant_id, job.id


def _epochs(settings: Settings, job_id: str, first: int, last: int) -> None:
    with session_scope(settings.resolved_database_url) as db:
        if first == 1:
            assert claim_job(db=db, job_id=job_id, owner="w") is not None
        for epoch in range(first, last + 1):
            record_progress(db=db, job_id=job_id, owner="w", stage="s", progress=0.1, metrics=None,
                            event_kind="epoch", event_data={"epoch": epoch})


def _finish(settings: Settings, job_id: str) -> None:
    with session_scope(settings.resolved_database_url) as db:
        assert finish_job(db=db, job_id=job_id, owner="w", status="succeeded", results={})


async def _next_event(messages: AsyncIterator[str]) -> str:
    while (message := await asyncio.wait_for(anext(messages), 10)) == KEEPALIVE_MESSAGE:
        pass
    return message


def _seq(message: str) -> int:
    return int(message.split("\n", 1)[0].removeprefix("id: "))


def test_one_feed_per_job_read_until_its_last_stream_closes(settings: Settings) -> None:
    tenant_id, job_id = _queued_job(settings)
    _, other_job = _queued_job(settings)
    url = settings.resolved_database_url

    async def scenario() -> None:
        registry = StreamRegistry()
        streams = [registry.open(url=url, tenant_id=tenant_id, job_id=job_id, after=0, cap=4) for _ in range(3)]
        other = registry.open(url=url, tenant_id=tenant_id, job_id=other_job, after=0, cap=4)
        assert set(registry.feeds) == {job_id, other_job} and registry.open_per_tenant == {tenant_id: 4}
        feed, poller = registry.feeds[job_id], registry.poller
        assert poller is not None
        iterators = [s.messages() for s in [*streams, other]]
        for it in iterators:
            assert await anext(it) == RETRY_MESSAGE
            assert _seq(await _next_event(it)) == 1
        await iterators[0].aclose()  # a client leaves: the job stays followed for the other two
        assert registry.feeds[job_id] is feed and not poller.done()
        assert registry.open_per_tenant == {tenant_id: 3}
        for it in iterators[1:3]:
            await it.aclose()
        assert list(registry.feeds) == [other_job] and not poller.done()  # the job left the round
        await iterators[3].aclose()
        assert registry.feeds == {} and registry.open_per_tenant == {} and registry.poller is None
        await asyncio.sleep(0)
        assert poller.cancelled()  # nothing followed: nothing polls

    asyncio.run(scenario())


def test_a_stream_that_falls_behind_catches_up_in_order(settings: Settings) -> None:
    tenant_id, job_id = _queued_job(settings)
    url = settings.resolved_database_url

    async def scenario() -> None:
        registry = StreamRegistry(max_pending=3)
        slow, fast = (registry.open(url=url, tenant_id=tenant_id, job_id=job_id, after=0, cap=5) for _ in range(2))
        slow_it, fast_it = slow.messages(), fast.messages()
        for it in (slow_it, fast_it):
            assert await anext(it) == RETRY_MESSAGE
            assert _seq(await _next_event(it)) == 1
        await asyncio.to_thread(_epochs, settings, job_id, 1, 10)  # events 2 (started) to 12
        fast_seen = [_seq(await _next_event(fast_it)) for _ in range(11)]
        assert fast_seen == list(range(2, 13))
        assert slow.sub.behind  # more than 3 messages waited for it: it dropped them and reads the database
        slow_seen = [_seq(await _next_event(slow_it)) for _ in range(11)]
        assert slow_seen == list(range(2, 13))
        await asyncio.to_thread(_finish, settings, job_id)
        for it in (slow_it, fast_it):
            last = await _next_event(it)
            assert _seq(last) == 13 and "event: succeeded" in last
            assert [m async for m in it] == []  # the stream ends after the final event
        assert registry.feeds == {} and registry.open_per_tenant == {}

    asyncio.run(scenario())


def test_a_stream_past_the_last_event_does_not_hold_back_later_ones(settings: Settings) -> None:
    tenant_id, job_id = _queued_job(settings)
    url = settings.resolved_database_url

    async def scenario() -> None:
        registry = StreamRegistry()
        ahead = registry.open(url=url, tenant_id=tenant_id, job_id=job_id, after=999, cap=5)
        ahead_it = ahead.messages()
        assert await anext(ahead_it) == RETRY_MESSAGE
        await asyncio.sleep(1.2)  # the feed has polled and found the job's last event is 1
        fresh_it = registry.open(url=url, tenant_id=tenant_id, job_id=job_id, after=0, cap=5).messages()
        assert await anext(fresh_it) == RETRY_MESSAGE
        assert _seq(await _next_event(fresh_it)) == 1
        await asyncio.to_thread(_epochs, settings, job_id, 1, 1)
        assert _seq(await _next_event(fresh_it)) == 2
        assert _seq(await _next_event(fresh_it)) == 3
        for it in (ahead_it, fresh_it):
            await it.aclose()

    asyncio.run(scenario())
