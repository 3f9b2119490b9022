"""Append-only job events with a per-job sequence number."""

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import Job, JobEvent
from app.webhooks.outbox import on_job_event


def add_event(*, db: Session, job_id: str, kind: str, data: dict[str, Any] | None = None) -> JobEvent:
    """Append an event; the sequence comes from an atomic UPDATE ... RETURNING on the job row."""
    seq = db.execute(
        update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1).returning(Job.event_seq),
        execution_options={"synchronize_session": False},
    ).scalar_one()
    event = JobEvent(job_id=job_id, seq=seq, kind=kind, data=data or {})
    db.add(event)
    # Webhook deliveries join this transaction; an epoch may reach task milestones (more events).
    for follow_kind, follow_data in on_job_event(db=db, job_id=job_id, kind=kind, data=event.data):
        add_event(db=db, job_id=job_id, kind=follow_kind, data=follow_data)
    return event


def list_events(*, db: Session, job_id: str, after: int, limit: int) -> tuple[list[JobEvent], bool]:
    """Return up to ``limit`` events with ``seq > after`` and whether more follow."""
    rows = list(db.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after).order_by(JobEvent.seq).limit(limit + 1)
    ))
    return rows[:limit], len(rows) > limit
