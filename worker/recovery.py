"""A pool process that dies mid-job (SIGKILL, the OOM killer) hands its job back at once.

The worker's main process sees a pool child's exit within ``MAINTAIN_INTERVAL_SECONDS`` (pool.py);
without this the job stayed ``running`` until its heartbeat went stale (67 s measured) and only
then did the reaper requeue it. Whole-host loss still goes through the reaper: nobody is left to
see the exit.

Runs in the main process's event-loop thread, inside the pool's check for exited children, and
before Celery rejects the job's message back to the queue (``task_reject_on_worker_lost``), so the
redelivered message finds the job queued and the next child resumes it from its checkpoint. No
fork happens on this thread meanwhile, and the session's connection is closed before it returns
(NullPool), so a child forked after it inherits no socket.
"""

import logging
import signal
import socket
from typing import Any

from app.config import Settings, get_settings
from app.queue import RUN_JOB_TASK
from app.services.lifecycle import requeue_job_of_dead_process
from worker.reaper import unpooled_sessions

log = logging.getLogger("distillery.recovery")


def job_of_task(task_id: str | None) -> str | None:
    """Return the job id a ``run_job`` task of this worker was called with (None for other tasks)."""
    from celery.worker import state

    request = state.requests.get(task_id) if task_id else None
    if request is None or request.name != RUN_JOB_TASK or not request.args:
        return None
    return str(request.args[0])


def describe_exit(exitcode: int | None) -> str:
    """"SIGKILL" for a process killed by a signal, else "exit <code>"."""
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit {exitcode}"


def hand_back_job_of_dead_child(*, task_id: str | None, pid: int, exitcode: int | None,
                                settings: Settings | None = None) -> str | None:
    """Requeue (or fail, after max attempts) the job the dead child ``pid`` held; return what was done.

    Keyed on the job's lease owner ``host:pid:...``: a job the child had not claimed yet, or had
    already finished, or that another process holds, is left alone. Never raises: a database that
    cannot be reached leaves the job to the reaper's stale-heartbeat path.
    """
    job_id = job_of_task(task_id)
    if job_id is None:
        return None
    settings = settings or get_settings()
    how = describe_exit(exitcode)
    try:
        with unpooled_sessions(settings.resolved_database_url)() as db:
            detail: dict[str, Any] = {"pid": pid, "exit": how}
            done = requeue_job_of_dead_process(db=db, job_id=job_id, owner_prefix=f"{socket.gethostname()}:{pid}:",
                                               max_attempts=settings.max_attempts, detail=detail)
    except Exception:
        log.exception("job %s: its process %d died (%s) and it could not be handed back now; the reaper "
                      "will once its heartbeat is stale", job_id, pid, how)
        return None
    if done is not None:
        log.warning("job %s: its process %d died (%s); job %s", job_id, pid, how, done)
    return done
