"""Job events -> webhook deliveries, written in the event's own transaction and sent after its commit.

A delivery row is the outbox: it exists exactly when the event does. Its task is sent once the
transaction commits; if that send fails (broker down), a webhook worker's sweep sends it later.
"""

import json
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import utcnow
from app.job_status import JobStatus
from app.models import Job, WebhookDelivery, WebhookEndpoint
from app.queue import enqueue_webhook
from app.webhooks.milestones import milestone_events

log = logging.getLogger("distillery.webhooks")

# job event kind -> webhook event type
JOB_EVENT_TYPES = {"started": "job.started", "succeeded": "job.succeeded", "failed": "job.failed",
                   "cancelled": "job.cancelled", "task_milestone": "job.task_milestone"}
EVENT_TYPES = tuple(JOB_EVENT_TYPES.values())
_PENDING = "webhook_deliveries_to_send"


def on_job_event(*, db: Session, job_id: str, kind: str, data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Queue deliveries for one job event; return the job events it leads to (task milestones)."""
    if kind == "epoch":
        return milestone_events(db=db, job_id=job_id, data=data)
    event_type = JOB_EVENT_TYPES.get(kind)
    if event_type is None:
        return []
    endpoints = [endpoint for endpoint in db.scalars(
        select(WebhookEndpoint).join(Job, Job.tenant_id == WebhookEndpoint.tenant_id).where(Job.id == job_id)
        .order_by(WebhookEndpoint.created_at)) if event_type in endpoint.event_types]
    if not endpoints:
        return []
    job = db.get(Job, job_id)
    assert job is not None
    now = utcnow()
    body = json.dumps({"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"),
                       "data": {"job_id": job_id, "name": job.name, **_event_data(kind, data)}},
                      separators=(",", ":"))
    horizon = timedelta(seconds=get_settings().webhook_retry_horizon_seconds)
    deliveries = [WebhookDelivery(endpoint_id=endpoint.id, event_type=event_type, job_id=job_id, body=body,
                                  status="pending", attempts=0, next_attempt_at=now, expires_at=now + horizon,
                                  created_at=now) for endpoint in endpoints]
    db.add_all(deliveries)
    db.flush()
    send_after_commit(db, [delivery.id for delivery in deliveries])
    return []


def _event_data(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    if kind == "task_milestone":
        return dict(data)
    if kind == "started":
        return {"status": JobStatus.RUNNING, "attempt": data.get("attempt")}
    out: dict[str, Any] = {"status": kind}
    if data.get("code"):
        out["error"] = {"code": data["code"], "message": data.get("message") or ""}
    return out


def send_after_commit(db: Session, delivery_ids: list[str]) -> None:
    """Send these deliveries' tasks when (and only if) the session's transaction commits."""
    if _PENDING not in db.info:
        db.info[_PENDING] = []
        event.listen(db, "after_commit", _send_pending)
        event.listen(db, "after_rollback", _forget_pending)
    db.info[_PENDING].extend(delivery_ids)


def _send_pending(session: Session) -> None:
    ids, session.info[_PENDING] = session.info[_PENDING], []
    for delivery_id in ids:
        try:
            enqueue_webhook(delivery_id)
        except Exception:
            log.warning("could not send webhook delivery %s now; the sweep will", delivery_id, exc_info=True)


def _forget_pending(session: Session) -> None:
    session.info[_PENDING] = []
