"""Live job and search events for SSE streams: each followed row read once per round, fanned out in-process.

Before, every open stream polled the database twice a second through the request threadpool (and
held a pooled connection for its whole life); 200 streams on one job left 7 of 20 status requests
unanswered after 20 s. Now a job has one ``Feed`` however many streams follow it, and one poller
per API process reads all followed jobs every ``POLL_SECONDS``: one query for their rows (status,
last event number), then the new events of the jobs whose number moved. Each event is rendered as
an SSE message once and handed to every stream of its job through an in-memory queue. A job stops
being read when its last stream closes or its final event is out; the poller stops when no job is
followed. Its reads run on a few threads of their own, never on the request threadpool. A stream
that falls far behind, or joins with an older ``Last-Event-ID``, catches up from the database by
itself, then takes the shared feed again.

PostgreSQL LISTEN/NOTIFY or Redis pub/sub would save the idle rounds, but events are written by
the worker and the lifecycle code through ``add_event`` (another owner), and one indexed read of the
followed jobs per half second measured cheap on both deployments (docs/PERFORMANCE.md), and works the
same on embedded SQLite. Feeds and the per-tenant count of open streams are per API process.

A search's stream is fed the same way (``SEARCH_EVENTS``: the search row's status and event number,
its search events): the same poller, and one count per tenant across job and search streams, so the
cap bounds what a tenant's streams cost whatever they follow. Job and search ids carry different
prefixes (``job_``, ``srch_``), so one dict of feeds holds both.
"""

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import get_sessionmaker
from app.errors import AppError
from app.job_status import TERMINAL_STATUSES
from app.models import Job, Search, Tenant
from app.services import events as job_events
from app.services import searches as search_service
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


@dataclass(frozen=True)
class EventSource:
    """What a feed follows: rows with a status and a last event number (``row``), and their events."""

    name: str
    row: type[Job] | type[Search]
    list_events: Callable[[Session, str, int, int], tuple[list[Any], bool]]  # (db, row id, after, limit)


JOB_EVENTS = EventSource("job", Job, lambda db, row_id, after, limit: job_events.list_events(
    db=db, job_id=row_id, after=after, limit=limit))
SEARCH_EVENTS = EventSource("search", Search, lambda db, row_id, after, limit: search_service.list_events(
    db=db, search_id=row_id, after=after, limit=limit))


def _rendered(db: Session, source: EventSource, row_id: str, after: int, limit: int) -> list[tuple[int, str]]:
    rows, _ = source.list_events(db, row_id, after, limit)
    return [(e.seq, sse_message(seq=e.seq, kind=e.kind, data=e.data, created_at=e.created_at.isoformat()))
            for e in rows]


def read_events(*, url: str, row_id: str, after: int, source: EventSource = JOB_EVENTS) -> list[tuple[int, str]]:
    """Return up to ``BATCH`` events of the row after ``after`` as (seq, SSE message), oldest first."""
    with get_sessionmaker(url, autocommit=True)() as db:
        return _rendered(db, source, row_id, after, BATCH)


def read_new_events(*, url: str, positions: dict[str, int],
                    source: EventSource = JOB_EVENTS) -> dict[str, tuple[list[tuple[int, str]], int, bool]]:
    """For each row (a job, or a search) -> last seq published, return one batch of newer events, its last
    seq, and whether it ended.

    One query reads every followed row; events are read only for rows whose counter moved, so idle
    ones cost nothing more. The final event is written in the same transaction as the terminal
    status, so a row seen ended has all its events committed. A deleted row counts as ended.
    """
    out = {}
    model = source.row
    with get_sessionmaker(url, autocommit=True)() as db:
        ids = list(positions)
        rows: dict[str, tuple[str, int]] = {}
        for i in range(0, len(ids), BATCH):  # stay far below any database's bound-parameter limit
            query = select(model.id, model.status, model.event_seq).where(model.id.in_(ids[i:i + BATCH]))
            rows.update({row_id: (status, seq) for row_id, status, seq in db.execute(query)})
        for row_id, after in positions.items():
            if row_id not in rows:
                out[row_id] = ([], after, True)
                continue
            status, last_seq = rows[row_id]
            events = _rendered(db, source, row_id, after, BATCH) if last_seq > after else []
            newest = events[-1][0] if events else after
            out[row_id] = (events, last_seq, status in TERMINAL_STATUSES and newest >= last_seq)
    return out


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


class Feed:
    """A followed job or search (its ``source``): what has been published so far, and the subscriptions it goes to."""

    def __init__(self, *, url: str, row_id: str, after: int, source: EventSource = JOB_EVENTS):
        self.url, self.row_id, self.source = url, row_id, source
        self.published = after  # last seq handed to the subscriptions
        self.subscriptions: set[Subscription] = set()

    def publish(self, events: list[tuple[int, str]], last_seq: int, ended: bool) -> None:
        # A stream that started past the job's last event (a stale Last-Event-ID) must not hold the
        # feed there, or streams joining later would wait for numbers never written.
        self.published = min(self.published, last_seq)
        for seq, message in events:
            self.published = seq
            for sub in self.subscriptions:
                sub.push(seq, message)
        if ended:
            for sub in self.subscriptions:
                sub.end()


class StreamRegistry:
    """The followed jobs of one API process (one event loop), its open streams per tenant, and the poller.

    One poller task reads every followed job per round (one query for their rows, one per job with new
    events) and runs only while some job is followed; a job leaves the round when its last stream
    closes or its final event is out. A task per job measured worse: with 50 jobs followed, their 100
    reads/s (each a session and a query) took the API process to 17.7 % of a core against 9.7 % for
    one round (9.2 % with no stream open; docs/PERFORMANCE.md).
    """

    def __init__(self, *, max_pending: int = MAX_PENDING) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_pending = max_pending
        self.feeds: dict[str, Feed] = {}
        self.open_per_tenant: dict[str, int] = {}
        self.poller: asyncio.Task[None] | None = None
        self._new_feed = asyncio.Event()  # a new job to follow: read it now, not at the next round

    def open(self, *, url: str, tenant_id: str, after: int, cap: int, job_id: str | None = None,
             search_id: str | None = None) -> "EventStream":
        """Start following a job (or a search) after event ``after``; TooManyStreams past the tenant's cap.

        The cap counts the tenant's job and search streams together.
        """
        source, followed = (JOB_EVENTS, job_id) if search_id is None else (SEARCH_EVENTS, search_id)
        assert followed is not None and (job_id is None) != (search_id is None), "give a job_id or a search_id"
        if self.open_per_tenant.get(tenant_id, 0) >= cap:
            raise TooManyStreams(f"this tenant already has {cap} open event streams (DISTILLERY_MAX_STREAMS_PER_TENANT); "
                                 "close one or retry later", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self.open_per_tenant[tenant_id] = self.open_per_tenant.get(tenant_id, 0) + 1
        feed = self.feeds.get(followed)
        if feed is None:  # the first stream of this row: the feed starts where that stream starts
            feed = self.feeds[followed] = Feed(url=url, row_id=followed, after=after, source=source)
            self._new_feed.set()
            if self.poller is None:
                self.poller = self.loop.create_task(self._poll(), name="event-feeds")
        sub = Subscription(after, self.max_pending)
        feed.subscriptions.add(sub)
        return EventStream(registry=self, feed=feed, sub=sub, tenant_id=tenant_id)

    def close(self, stream: "EventStream") -> None:
        self.open_per_tenant[stream.tenant_id] -= 1
        if not self.open_per_tenant[stream.tenant_id]:
            del self.open_per_tenant[stream.tenant_id]
        feed = stream.feed
        feed.subscriptions.discard(stream.sub)
        if not feed.subscriptions and self.feeds.get(feed.row_id) is feed:
            del self.feeds[feed.row_id]  # its last stream left: no more reads for this job
        if not self.feeds and self.poller is not None:
            self.poller.cancel()  # nothing left to follow (a read in flight finishes unseen)
            self.poller = None

    async def _poll(self) -> None:
        failures = 0
        try:
            while self.feeds:
                self._new_feed.clear()
                feeds = list(self.feeds.values())
                try:
                    reads = {}
                    for url, source in {(f.url, f.source) for f in feeds}:
                        positions = {f.row_id: f.published for f in feeds if (f.url, f.source) == (url, source)}
                        reads[url, source] = await _in_reader_thread(read_new_events, url=url, positions=positions,
                                                                     source=source)
                    failures = 0
                except Exception:  # the database is away: keep the streams open, try again later
                    failures += 1
                    log.warning("event feeds: read failed (%d in a row)", failures, exc_info=True)
                    await asyncio.sleep(min(10.0, POLL_SECONDS * 2 ** failures))
                    continue
                more = False
                for feed in feeds:
                    if self.feeds.get(feed.row_id) is not feed:
                        continue  # its last stream closed during the read
                    events, last_seq, ended = reads[feed.url, feed.source][feed.row_id]
                    feed.publish(events, last_seq, ended)
                    if ended:
                        del self.feeds[feed.row_id]
                    more = more or len(events) == BATCH
                if not more:  # a full batch means more are waiting: read on at once
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_SECONDS):
                            await self._new_feed.wait()
        finally:
            if self.poller is asyncio.current_task():
                self.poller = None


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


def _find_search(*, url: str, tenant: Tenant, search_id: str) -> None:
    with get_sessionmaker(url, autocommit=True)() as db:
        search_service.get_search(db=db, tenant=tenant, search_id=search_id)


async def open_search_stream(*, url: str, tenant: Tenant, search_id: str, after: int, cap: int) -> "EventStream":
    """Open a stream on the tenant's search (NotFound for any other), TooManyStreams past ``cap``
    (the tenant's job and search streams together); the lookup as ``open_event_stream``'s."""
    await _in_reader_thread(_find_search, url=url, tenant=tenant, search_id=search_id)
    return stream_registry().open(url=url, tenant_id=tenant.id, search_id=search_id, after=after, cap=cap)


async def open_event_stream(*, url: str, tenant: Tenant, job_id: str, after: int, cap: int) -> "EventStream":
    """Open a stream on the tenant's job (NotFound for any other), TooManyStreams past ``cap``.

    The lookup takes and returns its connection within one reader thread: a request that held a
    pooled connection while it waited for a threadpool token (as the sync job dependency after the
    key check does) deadlocked with the others once a burst of streams outnumbered the pool.
    """
    await _in_reader_thread(_find_job, url=url, tenant=tenant, job_id=job_id)
    return stream_registry().open(url=url, tenant_id=tenant.id, job_id=job_id, after=after, cap=cap)


class EventStream:
    """One client's stream: the SSE text to send, in order, until the job's (or search's) final event."""

    def __init__(self, *, registry: StreamRegistry, feed: Feed, sub: Subscription, tenant_id: str):
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
            batch = await _in_reader_thread(read_events, url=feed.url, row_id=feed.row_id, after=sub.sent,
                                            source=feed.source)
            if not batch:
                break
            for seq, message in batch:
                if seq > sub.sent:
                    sub.sent = seq
                    yield message
