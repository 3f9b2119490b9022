"""The worker's side of a job: claim, heartbeat, progress, finish, release and reaping."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.job_status import JobStatus
from app.models import Artifact, Job
from app.services.events import add_event
from app.storage import StoredObject

_NO_SYNC = {"synchronize_session": False}


def claim_job(*, db: Session, job_id: str, owner: str, placement: dict[str, Any] | None = None) -> Job | None:
    """Take a queued job with one conditional UPDATE; None when another worker has it (or it ended).

    `placement` (the worker's device slot) joins the `started` event."""
    now = utcnow()
    claimed = db.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
        .values(status=JobStatus.RUNNING, attempt=Job.attempt + 1, lease_owner=owner, heartbeat_at=now,
                started_at=now, error_code=None, error_message=None),
        execution_options=_NO_SYNC,
    ).rowcount
    if not claimed:
        db.rollback()
        return None
    job = db.get(Job, job_id, populate_existing=True)
    assert job is not None
    add_event(db=db, job_id=job_id, kind="started", data={"attempt": job.attempt, "worker": owner,
                                                           **({"placement": placement} if placement else {})})
    db.commit()
    return job


@dataclass(frozen=True)
class LeaseState:
    held: bool  # False once the job was reaped or finished by someone else
    cancel_requested: bool


def heartbeat(*, db: Session, job_id: str, owner: str) -> LeaseState:
    """Refresh the lease and report whether the job should stop."""
    updated = db.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
        .values(heartbeat_at=utcnow()),
        execution_options=_NO_SYNC,
    ).rowcount
    cancel = bool(db.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    db.commit()
    return LeaseState(held=bool(updated), cancel_requested=cancel)


def record_progress(
    *, db: Session, job_id: str, owner: str, stage: str, progress: float,
    metrics: dict[str, Any] | None, event_kind: str, event_data: dict[str, Any],
) -> None:
    """Write the job's progress and latest metrics and append one event."""
    values: dict[str, Any] = {"stage": stage, "progress": progress, "heartbeat_at": utcnow()}
    if metrics is not None:
        values["metrics"] = metrics
    held = db.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(**values),
                      execution_options=_NO_SYNC).rowcount
    if held:
        add_event(db=db, job_id=job_id, kind=event_kind, data=event_data)
    db.commit()


def finish_job(
    *, db: Session, job_id: str, owner: str, status: JobStatus, error_code: str | None = None,
    error_message: str | None = None, results: dict[str, Any] | None = None,
    artifacts: list[tuple[str, StoredObject, str]] = (),  # type: ignore[assignment]
) -> bool:
    """End the job (succeeded/failed/cancelled) if this worker still holds it; store its artifacts."""
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "lease_owner": None,
                              "error_code": error_code, "error_message": error_message}
    if status == JobStatus.SUCCEEDED:
        values.update(progress=1.0, results=results)
    ended = db.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
                       .values(**values), execution_options=_NO_SYNC).rowcount
    if not ended:
        db.rollback()
        return False
    for name, stored, media_type in artifacts:
        db.add(Artifact(job_id=job_id, name=name, path=stored.key, size=stored.size,
                        sha256=stored.sha256, media_type=media_type))
    data: dict[str, Any] = {"status": status}
    if error_code:
        data.update(code=error_code, message=error_message)
    add_event(db=db, job_id=job_id, kind=status, data=data)
    db.commit()
    return True


def release_job(*, db: Session, job_id: str, owner: str, reason: str) -> bool:
    """Put a running job back in the queue (worker shutting down); its checkpoint makes it resume."""
    released = db.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.QUEUED, lease_owner=None, enqueued_at=utcnow()),
        execution_options=_NO_SYNC,
    ).rowcount
    if released:
        add_event(db=db, job_id=job_id, kind="requeued", data={"reason": reason})
    db.commit()
    return bool(released)


def reap_stale_jobs(*, db: Session, stale_after: timedelta, max_attempts: int) -> list[str]:
    """Requeue running jobs whose heartbeat went stale, or fail them after ``max_attempts``.

    Returns the ids that were put back in the queue (the caller enqueues them after this commit).
    """
    cutoff = utcnow() - stale_after
    stale = list(db.scalars(select(Job).where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff)))
    requeued = [job.id for job in stale
                if _hand_back_lost(db=db, job=job, reason="heartbeat_stale", max_attempts=max_attempts) == "requeued"]
    db.commit()
    return requeued


def requeue_job_of_dead_process(*, db: Session, job_id: str, owner_prefix: str, max_attempts: int,
                                detail: dict[str, Any]) -> str | None:
    """Hand back a running job whose lease owner starts with ``owner_prefix`` (``host:pid:``), whose
    process is known dead; return "requeued", "failed", "cancelled", or None when no such lease holds.

    The worker's main process calls this as soon as its pool child dies, instead of waiting for the
    heartbeat to go stale. The prefix names the dead pid on this host; the conditional UPDATE in
    ``_hand_back_lost`` keys on the exact owner read here, so a job another process claimed in
    between is never taken from it.
    """
    job = db.scalar(select(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                                      Job.lease_owner.startswith(owner_prefix, autoescape=True)))
    kind = None if job is None else _hand_back_lost(db=db, job=job, reason="worker_process_died",
                                                     max_attempts=max_attempts, detail=detail)
    db.commit()
    return kind


def _hand_back_lost(*, db: Session, job: Job, reason: str, max_attempts: int,
                    detail: dict[str, Any] | None = None) -> str | None:
    """Requeue a running job whose worker is gone, or fail it after ``max_attempts`` (cancel it if
    asked); return the event kind written, or None when the job's lease changed meanwhile."""
    if job.attempt >= max_attempts:
        values: dict[str, Any] = {"status": JobStatus.FAILED, "lease_owner": None, "finished_at": utcnow(),
                                  "error_code": "worker_lost",
                                  "error_message": f"the worker or its job process was lost on each of {job.attempt} attempts"}
        kind = "failed"
    elif job.cancel_requested:
        values = {"status": JobStatus.CANCELLED, "lease_owner": None, "finished_at": utcnow()}
        kind = "cancelled"
    else:
        values = {"status": JobStatus.QUEUED, "lease_owner": None, "enqueued_at": utcnow()}
        kind = "requeued"
    # Conditional on the lost owner, so a worker that revives in between keeps its job.
    changed = db.execute(update(Job).where(Job.id == job.id, Job.lease_owner == job.lease_owner,
                                           Job.status == JobStatus.RUNNING).values(**values),
                         execution_options=_NO_SYNC).rowcount
    if not changed:
        return None
    data = {"reason": reason, "attempt": job.attempt, **(detail or {})}
    if kind == "failed":
        data.update(code="worker_lost", message=values["error_message"])
    add_event(db=db, job_id=job.id, kind=kind, data=data)
    return kind


def resend_waiting_jobs(*, db: Session, waiting_longer_than: timedelta) -> list[str]:
    """Return queued jobs whose message may be lost (sent long ago, never claimed) and restamp them.

    A broker that restarted without persistence loses its messages; sending again is safe because
    a duplicate finds the job claimed. Restamping keeps each job to one resend per interval.
    """
    cutoff = utcnow() - waiting_longer_than
    ids = list(db.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED, Job.enqueued_at < cutoff)))
    if ids:
        db.execute(update(Job).where(Job.id.in_(ids), Job.status == JobStatus.QUEUED).values(enqueued_at=utcnow()),
                   execution_options=_NO_SYNC)
        for job_id in ids:
            add_event(db=db, job_id=job_id, kind="resent", data={"reason": "not claimed in time"})
    db.commit()
    return ids
