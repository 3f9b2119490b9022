"""Live job events for SSE streams: one poller per job, fanned out in-process to each open stream.

Before, every open stream polled the database twice a second through the request threadpool; 200
streams on one job left 7 of 20 status requests unanswered after 20 s. Now a job has one
``JobFeed`` however many streams follow it: its poller reads one row (status, last event number)
every ``POLL_SECONDS``, reads new events only when that number moved, renders each SSE message once
and hands it to every stream of the job. The poller stops when the job's last stream closes or
after the job's final event. Its reads run on a few threads of their own, so streams never take the
threads that requests wait for. A stream that falls far behind, or joins with an older
``Last-Event-ID``, catches up from the database by itself, then takes the shared feed again.

PostgreSQL LISTEN/NOTIFY or Redis pub/sub would save the idle polls, but the events are written by
the worker and the lifecycle code through ``add_event``; one indexed row read per job per half
second measured cheap enough on both deployments (docs/PERFORMANCE.md), and works the same on
embedded SQLite. Counts and feeds are per API process.
"""

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import get_sessionmaker
from app.errors import AppError
from app.models import TERMINAL_STATUSES, Job, Tenant
from app.services.events import list_events
from app.services.jobs import get_job

log = logging.getLogger("distillery.streams")
T = TypeVar("T")

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
BATCH = 500  # events per database read
MAX_PENDING = 2000  # messages a slow stream may hold before it catches up from the database instead
RETRY_AFTER_SECONDS = 5
RETRY_MESSAGE = "retry: 2000\n\n"  # EventSource reconnects after 2 s, sending Last-Event-ID
KEEPALIVE_MESSAGE = ": keep-alive\n\n"
# Database reads of feeds and catch-ups: their own threads, never anyio's request threadpool (whose
# 40 tokens the old per-stream polls filled, so requests queued behind them).
_READERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="event-feed")


class TooManyStreams(AppError):
    status, code, title = 429, "too_many_streams", "Too many open event streams"


def sse_message(*, seq: int, kind: str, data: dict, created_at: str) -> str:
    """Render one event as an SSE message: id = seq, event = kind, data = the event as JSON."""
    event = {"seq": seq, "kind": kind, "data": data, "created_at": created_at}
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(event)}\n\n"


def _rendered(db: Session, job_id: str, after: int, limit: int) -> list[tuple[int, str]]:
    rows, _ = list_events(db=db, job_id=job_id, after=after, limit=limit)
    return [(e.seq, sse_message(seq=e.seq, kind=e.kind, data=e.data, created_at=e.created_at.isoformat()))
            for e in rows]


def read_events(*, url: str, job_id: str, after: int) -> list[tuple[int, str]]:
    """Return up to ``BATCH`` events after ``after`` as (seq, SSE message), oldest first."""
    with get_sessionmaker(url, autocommit=True)() as db:
        return _rendered(db, job_id, after, BATCH)


def read_new_events(*, url: str, job_id: str, after: int) -> tuple[list[tuple[int, str]], int, bool]:
    """Return one batch of events after ``after``, the job's last seq, and whether it ended with no more to read.

    The job row is read first and the events only when its event counter moved (an idle job costs one
    primary-key read). The final event is written in the same transaction as the terminal status, so
    a job seen ended has all its events committed. A deleted job counts as ended.
    """
    with get_sessionmaker(url, autocommit=True)() as db:
        row = db.execute(select(Job.status, Job.event_seq).where(Job.id == job_id)).one_or_none()
        if row is None:
            return [], after, True
        status, last_seq = row
        events = _rendered(db, job_id, after, BATCH) if last_seq > after else []
    newest = events[-1][0] if events else after
    return events, last_seq, status in TERMINAL_STATUSES and newest >= last_seq


async def _in_reader_thread(fn: Callable[..., T], **kwargs: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(_READERS, lambda: fn(**kwargs))


class Subscription:
    """One open stream's place in its job's feed: messages not yet sent, and how far it has got."""

    def __init__(self, after: int, max_pending: int):
        self.sent = after  # last seq written to this stream
        self.max_pending = max_pending
        self.pending: deque[tuple[int, str]] = deque()
        self.behind = True  # catch up from the database before taking the feed (set again on overflow)
        self.ended = False  # the feed has published the job's final event
        self.wake = asyncio.Event()

    def push(self, seq: int, message: str) -> None:
        if self.behind:
            pass  # it will read this one from the database
        elif len(self.pending) >= self.max_pending:
            self.pending.clear()
            self.behind = True
        else:
            self.pending.append((seq, message))
        self.wake.set()

    def end(self) -> None:
        self.ended = True
        self.wake.set()


class JobFeed:
    """The one poller of a job, publishing each new event to every subscription of that job."""

    def __init__(self, *, url: str, job_id: str, after: int, on_done: Callable[["JobFeed"], None]):
        self.url, self.job_id = url, job_id
        self.published = after  # last seq handed to the subscriptions
        self.subscriptions: set[Subscription] = set()
        self.ended = False
        self._on_done = on_done
        self.task = asyncio.get_running_loop().create_task(self._poll(), name=f"event-feed-{job_id}")

    async def _poll(self) -> None:
        failures = 0
        try:
            while True:
                try:
                    events, last_seq, ended = await _in_reader_thread(
                        read_new_events, url=self.url, job_id=self.job_id, after=self.published)
                    failures = 0
                except Exception:  # the database is away: keep the streams open, try again later
                    failures += 1
                    log.warning("event feed of %s: read failed (%d in a row)", self.job_id, failures, exc_info=True)
                    await asyncio.sleep(min(10.0, POLL_SECONDS * 2 ** failures))
                    continue
                # A stream that started past the job's last event (a stale Last-Event-ID) must not
                # hold the feed there, or streams joining later would wait for numbers never written.
                self.published = min(self.published, last_seq)
                for seq, message in events:
                    self.published = seq
                    for sub in self.subscriptions:
                        sub.push(seq, message)
                if ended:
                    self.ended = True
                    for sub in self.subscriptions:
                        sub.end()
                    return
                if len(events) < BATCH:  # a full batch means more are waiting: read on at once
                    await asyncio.sleep(POLL_SECONDS)
        finally:
            self._on_done(self)


class StreamRegistry:
    """The feeds of one API process (one event loop) and its open streams per tenant."""

    def __init__(self, *, max_pending: int = MAX_PENDING) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_pending = max_pending
        self.feeds: dict[str, JobFeed] = {}
        self.open_per_tenant: dict[str, int] = {}

    def open(self, *, url: str, tenant_id: str, job_id: str, after: int, cap: int) -> "EventStream":
        """Start following a job after event ``after``; TooManyStreams past the tenant's cap."""
        if self.open_per_tenant.get(tenant_id, 0) >= cap:
            raise TooManyStreams(f"this tenant already has {cap} open event streams (DISTILLERY_MAX_STREAMS_PER_TENANT); "
                                 "close one or retry later", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.open_per_tenant[tenant_id] = self.open_per_tenant.get(tenant_id, 0) + 1
        feed = self.feeds.get(job_id)
        if feed is None:  # the first stream of this job starts its poller where that stream starts
            feed = self.feeds[job_id] = JobFeed(url=url, job_id=job_id, after=after, on_done=self._feed_done)
        sub = Subscription(after, self.max_pending)
        feed.subscriptions.add(sub)
        return EventStream(registry=self, feed=feed, sub=sub, tenant_id=tenant_id)

    def close(self, stream: "EventStream") -> None:
        self.open_per_tenant[stream.tenant_id] -= 1
        if not self.open_per_tenant[stream.tenant_id]:
            del self.open_per_tenant[stream.tenant_id]
        feed = stream.feed
        feed.subscriptions.discard(stream.sub)
        if not feed.subscriptions:
            feed.task.cancel()  # its last stream left: stop polling (a read in flight finishes unseen)
            self._feed_done(feed)

    def _feed_done(self, feed: JobFeed) -> None:
        if self.feeds.get(feed.job_id) is feed:
            del self.feeds[feed.job_id]


_registry: StreamRegistry | None = None


def stream_registry() -> StreamRegistry:
    """Return the registry of the running event loop (one per API process; a new loop gets a new one)."""
    global _registry
    if _registry is None or _registry.loop is not asyncio.get_running_loop():
        _registry = StreamRegistry()
    return _registry


def _find_job(*, url: str, tenant: Tenant, job_id: str) -> None:
    with get_sessionmaker(url, autocommit=True)() as db:
        get_job(db=db, tenant=tenant, job_id=job_id)


async def open_event_stream(*, url: str, tenant: Tenant, job_id: str, after: int, cap: int) -> "EventStream":
    """Open a stream on the tenant's job (NotFound for any other), TooManyStreams past ``cap``.

    The lookup takes and returns its connection within one reader thread: a request that held a
    pooled connection while it waited for a threadpool token (as the sync job dependency after the
    key check does) deadlocked with the others once a burst of streams outnumbered the pool.
    """
    await _in_reader_thread(_find_job, url=url, tenant=tenant, job_id=job_id)
    return stream_registry().open(url=url, tenant_id=tenant.id, job_id=job_id, after=after, cap=cap)


class EventStream:
    """One client's stream: the SSE text to send, in order, until the job's final event."""

    def __init__(self, *, registry: StreamRegistry, feed: JobFeed, sub: Subscription, tenant_id: str):
        self.registry, self.feed, self.sub, self.tenant_id = registry, feed, sub, tenant_id
        self.closed = False

    def close(self) -> None:
        """Leave the feed and free the tenant's slot; safe to call more than once."""
        if not self.closed:
            self.closed = True
            self.registry.close(self)

    async def messages(self) -> AsyncIterator[str]:
        """Yield the retry hint, every event after the start (each once, in order), keep-alives; end after the last."""
        sub = self.sub
        try:
            yield RETRY_MESSAGE
            while True:
                if sub.behind:
                    async for message in self._catch_up():
                        yield message
                while sub.pending:
                    seq, message = sub.pending.popleft()
                    if seq > sub.sent:
                        sub.sent = seq
                        yield message
                if sub.behind:
                    continue
                if sub.ended:
                    return
                sub.wake.clear()
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        await sub.wake.wait()
                except TimeoutError:
                    yield KEEPALIVE_MESSAGE
        finally:
            self.close()

    async def _catch_up(self) -> AsyncIterator[str]:
        # Everything the feed publishes from now on lands in `pending`, so reading the database up to
        # what it has published so far leaves no gap; `sent` drops the overlap.
        sub, feed = self.sub, self.feed
        sub.behind = False
        target = feed.published
        while sub.sent < target:
            batch = await _in_reader_thread(read_events, url=feed.url, job_id=feed.job_id, after=sub.sent)
            if not batch:
                break
            for seq, message in batch:
                if seq > sub.sent:
                    sub.sent = seq
                    yield message
