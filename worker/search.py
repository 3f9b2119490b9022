"""The search controller in the worker: a sweep thread, and a step when a trial's job ends.

Every job worker runs the sweep (a thread of its main process, like the reaper): each
`search_poll_seconds` it steps every search whose lease is free. A step also runs at once in the
process that just finished a search's child job, so the next trial starts without waiting for a
sweep. A step is idempotent and its state is in the database (app/services/searches_controller.py):
kill a worker mid-step and the next sweep, in this worker or another, finishes the work.
"""

import logging
import os
import socket
import threading
import uuid
from functools import lru_cache

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.models import SearchTrial
from app.queue import enqueue

log = logging.getLogger("distillery.searches")

# As for the reaper: a pool process forked mid-step would inherit whatever this thread held
# (an import lock, a connection), so a fork waits for a running step and a step never overlaps one.
_STEPPING = threading.Lock()
os.register_at_fork(before=_STEPPING.acquire, after_in_parent=_STEPPING.release,
                    after_in_child=_STEPPING.release)


@lru_cache(maxsize=4)
def _sessions(url: str, pid: int) -> sessionmaker[Session]:
    """Unpooled sessions: the worker's main process forks, and a child must not share a socket."""
    from app.db import (
        _sqlite_pragmas,  # the same WAL and busy timeout as every other connection
    )

    engine = create_engine(url, poolclass=NullPool, **({"connect_args": {"timeout": 30}}
                                                       if url.startswith("sqlite") else {}))
    if url.startswith("sqlite"):
        from sqlalchemy import event

        event.listen(engine, "connect", _sqlite_pragmas)
    return sessionmaker(bind=engine, expire_on_commit=False)


def advance_search(search_id: str, *, settings: Settings) -> bool:
    """Run one controller step on the search if no other step holds it; return whether it ran."""
    from app.services.searches_controller import (
        acquire_lease,
        release_lease,
        step_search,
    )

    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    sessions = _sessions(settings.resolved_database_url, os.getpid())
    with sessions() as db:
        if not acquire_lease(db=db, search_id=search_id, owner=owner):
            return False
        try:
            to_enqueue = step_search(db=db, settings=settings, search_id=search_id)
        except Exception:
            db.rollback()
            log.exception("search %s: controller step failed; the next sweep tries again", search_id)
            to_enqueue = []
        finally:
            release_lease(db=db, search_id=search_id, owner=owner)
    for job_id in to_enqueue:  # after the commit; a message lost here is resent by the reaper
        enqueue(job_id, settings=settings)
    return True


def sweep_searches(settings: Settings) -> None:
    """Step every active search whose lease is free."""
    from app.services.searches_controller import active_search_ids

    with _sessions(settings.resolved_database_url, os.getpid())() as db:
        ids = active_search_ids(db=db)
    for search_id in ids:
        advance_search(search_id, settings=settings)


def advance_parent_search(job_id: str, *, settings: Settings) -> None:
    """After a job ends: step its search at once when it is a search's trial."""
    with _sessions(settings.resolved_database_url, os.getpid())() as db:
        search_id = db.scalar(select(SearchTrial.search_id).where(  # a trial's job, or a front trial's finalise job
            (SearchTrial.job_id == job_id) | (SearchTrial.final_job_id == job_id)))
    if search_id is not None:
        advance_search(search_id, settings=settings)


def start_search_thread(settings: Settings) -> threading.Thread:
    """Sweep the searches every ``search_poll_seconds`` in a daemon thread of the worker's main process."""

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(settings.search_poll_seconds):
            try:
                with _STEPPING:
                    sweep_searches(settings)
            except Exception:  # a database hiccup must not end the sweeps
                log.exception("search sweep failed; retrying next interval")

    thread = threading.Thread(target=loop, name="distillery-searches", daemon=True)
    thread.start()
    return thread
