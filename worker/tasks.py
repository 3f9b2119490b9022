"""``run_job(job_id)``: claim the job, train it through ``app.training`` with DB callbacks, finalise."""

import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from app.config import Settings, get_settings
from app.db import session_scope
from app.files.refs import file_resolver
from app.job_status import JobStatus
from app.observability import worker_metrics
from app.observability.logs import job_context
from app.queue import RUN_JOB_TASK, enqueue
from app.services.artifacts import store_outputs
from app.services.events import add_event
from app.services.lifecycle import claim_job, finish_job, heartbeat, record_progress, release_job
from app.services.trial_state import fetch_trial_state
from app.training import TrainCallbacks
from worker.celery_app import celery_app
from worker.ddp import defer_if_too_big, job_placement

log = logging.getLogger("distillery.worker")
T = TypeVar("T")


def with_db_retry(fn: Callable[[], T], *, what: str, attempts: int = 8, first_delay: float = 0.5) -> T:
    """Retry a database write through a short outage (a restarting server), then give up."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception:
            if attempt == attempts:
                raise
            log.warning("%s failed (attempt %d/%d); retrying in %.1fs", what, attempt, attempts, delay, exc_info=True)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


class JobRunState:
    """Flags shared by the heartbeat thread, the SIGTERM handler and the training loop."""

    def __init__(self) -> None:
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self.shutting_down = threading.Event()
        self.done = threading.Event()

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lease_lost.is_set() or self.shutting_down.is_set()


def _heartbeat_loop(*, settings: Settings, job_id: str, owner: str, state: JobRunState) -> None:
    while not state.done.wait(settings.heartbeat_seconds):
        try:
            with session_scope(settings.resolved_database_url) as db:
                lease = heartbeat(db=db, job_id=job_id, owner=owner)
        except Exception:
            log.warning("heartbeat for job %s failed; will retry", job_id, exc_info=True)
            continue
        if lease.cancel_requested:
            state.cancel_requested.set()
        if not lease.held:
            state.lease_lost.set()


class DatabaseCallbacks(TrainCallbacks):
    """Write stage starts and per-epoch progress/metrics to the job row and its events."""

    def __init__(self, *, settings: Settings, job_id: str, owner: str, state: JobRunState):
        self.settings, self.job_id, self.owner, self.state = settings, job_id, owner, state
        self._progress = 0.0

    def _record(self, **kwargs: Any) -> None:
        def write() -> None:
            with session_scope(self.settings.resolved_database_url) as db:
                record_progress(db=db, job_id=self.job_id, owner=self.owner, **kwargs)

        with_db_retry(write, what=f"progress write for job {self.job_id}")

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        self._record(stage=stage, progress=self._progress, metrics=None, event_kind="stage_started",
                     event_data={"stage": stage, "epochs": epochs})

    def on_epoch_end(self, *, stage: str, epoch: int, epochs: int, progress: float, metrics: dict[str, float],
                     losses: dict[str, float], seconds: float) -> None:
        self._progress = progress
        worker_metrics.epoch_ended(stage=stage, seconds=seconds)
        latest = {"stage": stage, "epoch": epoch, "epochs": epochs, "metrics": metrics, "losses": losses}
        self._record(stage=stage, progress=progress, metrics=latest, event_kind="epoch",
                     event_data={**latest, "progress": round(progress, 4), "seconds": round(seconds, 4)})

    def should_stop(self) -> bool:
        return self.state.should_stop()

    def on_note(self, *, message: str) -> None:
        def write() -> None:
            with session_scope(self.settings.resolved_database_url) as db:
                add_event(db=db, job_id=self.job_id, kind="data_note", data={"message": message})
                db.commit()

        with_db_retry(write, what=f"data note for job {self.job_id}")


def _install_sigterm_handler(state: JobRunState) -> Callable[[], None]:
    """On SIGTERM stop at the next step and hand the job back (only possible on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        log.warning("SIGTERM: stopping the running job at the next step and requeueing it")
        state.shutting_down.set()

    signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, previous)


OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """Map an unexpected exception to (code, one-line message) for the job record."""
    text = str(exc).strip()
    first_line = text.splitlines()[0][:300] if text else ""
    if isinstance(exc, MemoryError) or any(marker in text.lower() for marker in OOM_MARKERS):
        return "out_of_memory", ("the job ran out of memory; use a smaller batch_size or smaller models"
                                 + (f" ({first_line})" if first_line else ""))
    return "internal_error", f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def _worker_shutting_down() -> bool:
    """True in a pool process forked after the worker began shutting down (it inherits the flags)."""
    from celery.worker import state

    # The flags hold an exit code once set (0 included), so "set" means "not None/False".
    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


def execute_job(job_id: str, *, settings: Settings) -> str:
    """Run one job to an end state (or back to the queue); return what happened."""
    from app.training import JobSpec, TrainingCancelled, TrainingError, tracked
    from app.training.distributed import RankFailed
    from app.training.launch import train_job

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)

    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    db_url = settings.resolved_database_url
    if _worker_shutting_down():
        # A worker in warm shutdown can still be handed a message; pass it on rather than claim.
        log.info("job %s: worker is shutting down; sending the job back to the queue unclaimed", job_id)
        enqueue(job_id, settings=settings)
        return "deferred"
    if defer_if_too_big(job_id, settings=settings):  # resources.devices: left to a bigger worker
        return "deferred"
    placement = job_placement(settings)  # its pool slot's GPUs: recorded, so sharing would show
    with session_scope(db_url) as db:
        job = claim_job(db=db, job_id=job_id, owner=owner, placement=placement)
    if job is None:
        log.info("job %s is not claimable (taken, finished or cancelled); skipping this message", job_id)
        return "skipped"
    log.info("job %s claimed by %s (attempt %d)", job_id, owner, job.attempt)

    def finish(status: JobStatus, **kwargs: Any) -> None:
        def write() -> None:
            with session_scope(db_url) as db:
                finish_job(db=db, job_id=job_id, owner=owner, status=status, **kwargs)

        with_db_retry(write, what=f"finishing job {job_id}")

    state = JobRunState()
    restore_signal = _install_sigterm_handler(state)
    beat = threading.Thread(target=_heartbeat_loop, name=f"heartbeat-{job_id}", daemon=True,
                            kwargs={"settings": settings, "job_id": job_id, "owner": owner, "state": state})
    beat.start()
    workdir = settings.work_dir / job_id
    try:
        spec = JobSpec.model_validate(job.spec)
        database = DatabaseCallbacks(settings=settings, job_id=job_id, owner=owner, state=state)
        trial_state = fetch_trial_state(settings=settings, tenant_id=job.tenant_id, spec=job.spec, workdir=workdir)
        with tracked(spec, database, tracking_uri=settings.mlflow_tracking_uri, workdir=workdir,
                     default_experiment=settings.mlflow_experiment, job_id=job_id) as callbacks:
            result = train_job(spec, workdir, callbacks=callbacks, job_id=job_id,
                               cache_dir=settings.data_dir.resolve() / "teacher-cache" / job.tenant_id,
                               resolver=file_resolver(settings=settings, tenant_id=job.tenant_id, spec=job.spec),
                               allow_torchscript=settings.allow_torchscript,
                               checkpoint_interval=settings.checkpoint_interval_seconds,
                               reuse_teacher_weights=True,  # a search's trials train their teachers once
                               trial_state=trial_state,  # a finalise job: its light trial's student
                               placement=placement)
        stored = store_outputs(job_id=job_id, files=list(result.artifacts), settings=settings)
        finish(JobStatus.SUCCEEDED, results=result.results, artifacts=stored)
        worker_metrics.job_results(result.results, batch_size=spec.training.batch_size)
        shutil.rmtree(workdir, ignore_errors=True)  # the checkpoint is no longer needed
        return JobStatus.SUCCEEDED
    except TrainingCancelled:
        if state.shutting_down.is_set() and not state.cancel_requested.is_set():
            with session_scope(db_url) as db:
                released = release_job(db=db, job_id=job_id, owner=owner, reason="worker_shutdown")
            if released:
                enqueue(job_id, settings=settings)
            return "requeued"
        if state.lease_lost.is_set():
            log.warning("job %s: lease lost (reaped by another worker); stopping", job_id)
            return "lease_lost"
        finish(JobStatus.CANCELLED)
        return JobStatus.CANCELLED
    except RankFailed as exc:  # a data-parallel rank died: hand the job back, it resumes
        log.warning("job %s: %s", job_id, exc)
        if job.attempt >= settings.max_attempts:
            finish(JobStatus.FAILED, error_code="rank_lost", error_message=str(exc))
            return JobStatus.FAILED
        with session_scope(db_url) as db:
            released = release_job(db=db, job_id=job_id, owner=owner, reason="rank_lost")
        if released:
            enqueue(job_id, settings=settings)
        return "requeued"
    except TrainingError as exc:
        log.warning("job %s failed: %s: %s", job_id, exc.code, exc.message)
        finish(JobStatus.FAILED, error_code=exc.code, error_message=exc.message)
        return JobStatus.FAILED
    except Exception as exc:
        # The traceback stays in the worker log; the caller gets a code and a one-line message.
        code, message = classify_failure(exc)
        log.exception("job %s failed: %s", job_id, code)
        finish(JobStatus.FAILED, error_code=code, error_message=message)
        return JobStatus.FAILED
    finally:
        state.done.set()
        restore_signal()


@celery_app.task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> str:
    """Celery entry point: refetch the job by id and run it."""
    with job_context(job_id), worker_metrics.running_job(job_id):
        try:
            outcome = execute_job(job_id, settings=get_settings())
        except BaseException:
            worker_metrics.job_handled("error")
            raise
    worker_metrics.job_handled(outcome)
    _advance_parent_search(job_id)
    return outcome


def _advance_parent_search(job_id: str) -> None:
    """A search's trial ended: step its search now (start the next trial) instead of at the next sweep."""
    from worker.search import advance_parent_search

    try:
        advance_parent_search(job_id, settings=get_settings())
    except Exception:  # the sweep steps it later; the job's own outcome is already recorded
        log.exception("job %s: stepping its search failed", job_id)
