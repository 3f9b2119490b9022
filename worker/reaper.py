"""Find jobs whose worker died (stale heartbeat): requeue them to resume, or fail them."""

import logging
import os
import threading
from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache

from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.queue import enqueue
from app.services.lifecycle import reap_stale_jobs, resend_waiting_jobs

log = logging.getLogger("distillery.reaper")

# The sweep runs in a thread of the worker's main process, which forks a pool process per job. A
# child forked mid-sweep inherits whatever that thread held at that instant and nobody releases it
# there: seen as a child hanging for good in `import psycopg` (the sweep held that module's import
# lock). So a fork waits for a running sweep to end, and the sweep never overlaps a fork.
_SWEEPING = threading.Lock()
os.register_at_fork(before=_SWEEPING.acquire, after_in_parent=_SWEEPING.release,
                    after_in_child=_SWEEPING.release)


@lru_cache(maxsize=4)
def unpooled_sessions(url: str) -> sessionmaker[Session]:
    """Sessions whose connection is closed when the session ends.

    The reaper runs in the worker's main process, which forks a fresh pool process for every job;
    a connection left in a pool here would be inherited by the child and the same socket used by
    two processes at once. A server that does not answer fails the connect within 5 s: the
    recovery of a dead pool process (worker/recovery.py) runs on the worker's event loop.
    """
    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    return sessionmaker(bind=create_engine(url, poolclass=NullPool, connect_args=connect_args),
                        expire_on_commit=False)


def reap_once(settings: Settings) -> list[str]:
    """Run one sweep; return the ids sent to the queue again (requeued or resent)."""
    with unpooled_sessions(settings.resolved_database_url)() as db:
        requeued = reap_stale_jobs(db=db, stale_after=timedelta(seconds=settings.stale_after_seconds),
                                   max_attempts=settings.max_attempts)
        waiting = resend_waiting_jobs(db=db, waiting_longer_than=timedelta(seconds=settings.resend_queued_after_seconds))
    for job_id in requeued:
        log.warning("job %s: heartbeat went stale, requeued to resume from its checkpoint", job_id)
        enqueue(job_id, settings=settings)
    for job_id in waiting:
        log.warning("job %s: queued for over %.0fs without a worker claiming it; sending it again",
                    job_id, settings.resend_queued_after_seconds)
        enqueue(job_id, settings=settings)
    return requeued + waiting


def start_reaper_thread(settings: Settings, *, each_sweep: Callable[[], None] | None = None) -> threading.Thread:
    """Sweep every ``reap_interval_seconds`` in a daemon thread of the worker's main process;
    ``each_sweep`` runs at the start and then before every sweep, under the same fork guard."""

    def guarded(step: Callable[[], object], what: str) -> None:
        try:
            with _SWEEPING:
                step()
        except Exception:  # a database or broker hiccup must not kill the sweeper
            log.exception("%s failed; retrying next interval", what)

    def loop() -> None:
        stop = threading.Event()
        if each_sweep is not None:
            guarded(each_sweep, "worker declaration")
        while not stop.wait(settings.reap_interval_seconds):
            if each_sweep is not None:
                guarded(each_sweep, "worker declaration")
            guarded(lambda: reap_once(settings), "reaper sweep")

    thread = threading.Thread(target=loop, name="distillery-reaper", daemon=True)
    thread.start()
    return thread
