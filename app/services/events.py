"""Append-only events with a per-row sequence number: a job's, and (through the same counter) a search's."""

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import Job, JobEvent, Search
from app.webhooks.outbox import on_job_event


def next_event_seq(*, db: Session, model: type[Job] | type[Search], row_id: str) -> int:
    """Hand out the row's next event number: an atomic UPDATE ... RETURNING, so two writers never share one."""
    return db.execute(
        update(model).where(model.id == row_id).values(event_seq=model.event_seq + 1).returning(model.event_seq),
        execution_options={"synchronize_session": False},
    ).scalar_one()


def add_event(*, db: Session, job_id: str, kind: str, data: dict[str, Any] | None = None) -> JobEvent:
    """Append an event to the job; its number comes from ``next_event_seq`` on the job row."""
    event = JobEvent(job_id=job_id, seq=next_event_seq(db=db, model=Job, row_id=job_id), kind=kind, data=data or {})
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
