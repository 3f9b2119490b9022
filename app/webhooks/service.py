"""Webhook endpoints of a tenant (create, list, get, delete, rotate) and their delivery log."""

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from app.config import Settings
from app.db import utcnow
from app.errors import InvalidRequest, NotFound
from app.models import Tenant, WebhookDelivery, WebhookEndpoint
from app.webhooks.outbox import send_after_commit
from app.webhooks.signing import new_secret
from app.webhooks.targets import TargetRefused, resolve_target

MAX_ENDPOINTS_PER_TENANT = 50


def create_endpoint(*, db: Session, tenant: Tenant, url: str, event_types: list[str],
                    settings: Settings) -> WebhookEndpoint:
    """Check the URL (scheme, resolution, public address) and keep a new endpoint with a fresh secret."""
    try:
        resolve_target(url, allow_private=settings.webhook_allow_private)
    except TargetRefused as exc:
        raise InvalidRequest(f"url: {exc}", errors=[{"field": "body.url", "message": str(exc),
                                                     "type": "webhook_url_refused"}]) from None
    count = len(list(db.scalars(select(WebhookEndpoint.id).where(WebhookEndpoint.tenant_id == tenant.id))))
    if count >= MAX_ENDPOINTS_PER_TENANT:
        raise InvalidRequest(f"a tenant may have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints")
    endpoint = WebhookEndpoint(tenant_id=tenant.id, url=url, event_types=list(dict.fromkeys(event_types)),
                               secret=new_secret(), created_at=utcnow())
    db.add(endpoint)
    db.commit()
    return endpoint


def list_endpoints(*, db: Session, tenant: Tenant) -> list[WebhookEndpoint]:
    return list(db.scalars(select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant.id)
                           .order_by(WebhookEndpoint.created_at)))


def get_endpoint(*, db: Session, tenant: Tenant, endpoint_id: str) -> WebhookEndpoint:
    endpoint = db.scalar(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                       WebhookEndpoint.tenant_id == tenant.id))
    if endpoint is None:
        raise NotFound(f"webhook {endpoint_id} not found")
    return endpoint


def delete_endpoint(*, db: Session, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint and its delivery log; nothing more is sent to it."""
    db.delete(endpoint)
    db.commit()


def rotate_secret(*, db: Session, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    """Replace the secret; attempts from now on (retries included) are signed with the new one."""
    endpoint.secret = new_secret()
    endpoint.secret_rotated_at = utcnow()
    db.commit()
    return endpoint


def list_deliveries(*, db: Session, endpoint: WebhookEndpoint, limit: int,
                    status: str | None) -> tuple[list[WebhookDelivery], bool]:
    """The endpoint's deliveries, newest first, with their attempts."""
    query = (select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
             .options(selectinload(WebhookDelivery.attempt_log))
             .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(limit + 1))
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    rows = list(db.scalars(query))
    return rows[:limit], len(rows) > limit


def redeliver(*, db: Session, endpoint: WebhookEndpoint, delivery_id: str, settings: Settings) -> WebhookDelivery:
    """Send a delivery again now (same webhook-id and body), with a fresh retry horizon."""
    delivery = db.scalar(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id,
                                                       WebhookDelivery.endpoint_id == endpoint.id))
    if delivery is None:
        raise NotFound(f"delivery {delivery_id} not found")
    now = utcnow()
    db.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id)
               # An attempt in flight keeps its lease (no second concurrent call); its outcome wins.
               .values(status="pending", next_attempt_at=now,
                       expires_at=now + timedelta(seconds=settings.webhook_retry_horizon_seconds)),
               execution_options={"synchronize_session": False})
    send_after_commit(db, [delivery.id])
    db.commit()
    db.refresh(delivery)
    return delivery
