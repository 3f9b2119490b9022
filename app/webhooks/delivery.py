"""One delivery attempt (signed POST, no redirects, a timeout), the retry schedule, and the sweep.

At least once: a delivery stays ``pending`` until a receiver answers 2xx or its horizon passes.
Every attempt of a delivery, and every redelivery, sends the same ``webhook-id`` and body; the
timestamp and signature are made per attempt, with the endpoint's current secret.
"""

import logging
import random
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import certifi
import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import utcnow
from app.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.queue import enqueue_webhook
from app.webhooks.signing import signed_headers
from app.webhooks.targets import TargetRefused, resolve_target

log = logging.getLogger("distillery.webhooks")
_NO_SYNC = {"synchronize_session": False}
EARLY_SLACK = timedelta(seconds=1)  # a countdown may fire a little early
ERROR_CHARS = 500


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(attempts: int, *, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempts + 1``: exponential, capped, times a jitter in [0.5, 1.5)."""
    base = min(settings.webhook_retry_max_seconds, settings.webhook_retry_base_seconds * 2 ** (attempts - 1))
    return base * (0.5 + (rng or random).random())


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle took ~90 ms per client on this (busy) machine; one context serves all.
    return ssl.create_default_context(cafile=certifi.where())


def post_signed(*, url: str, secret: str, msg_id: str, body: str, settings: Settings) -> Outcome:
    """POST the body to the URL's checked address; redirects are answers, not followed."""
    try:
        target = resolve_target(url, allow_private=settings.webhook_allow_private)
    except TargetRefused as exc:
        return Outcome(None, f"refused: {exc}")
    address = f"[{target.address}]" if ":" in target.address else target.address
    default_port = {"http": 80, "https": 443}[target.scheme]
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    if ":" in target.host and not target.host.startswith("["):
        host_header = f"[{target.host}]" if target.port == default_port else f"[{target.host}]:{target.port}"
    headers = signed_headers(secret=secret, msg_id=msg_id, timestamp=int(time.time()), body=body)
    headers.update({"host": host_header, "user-agent": "Distillery-Webhooks/1"})
    # The TLS server name (and certificate check) is the URL's host, the connection its checked address.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False,
                          verify=_tls_context()) as client:
            response = client.post(f"{target.scheme}://{address}:{target.port}{target.path}", content=body.encode(),
                                   headers=headers, extensions=extensions)
    except httpx.TimeoutException:
        return Outcome(None, f"timed out after {settings.webhook_timeout_seconds:g} s")
    except httpx.HTTPError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])
    if response.is_redirect:
        return Outcome(response.status_code, "redirect not followed")
    return Outcome(response.status_code, None if response.is_success else f"HTTP {response.status_code}")


def _claim(db: Session, *, delivery_id: str, lease: timedelta) -> WebhookDelivery | None:
    """Take a due, pending delivery for one attempt; None if it is not due, done, or in flight."""
    now = utcnow()
    taken = db.execute(
        update(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now + EARLY_SLACK,
            or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now))
        .values(lease_until=now + lease), execution_options=_NO_SYNC).rowcount
    db.commit()
    return db.get(WebhookDelivery, delivery_id, populate_existing=True) if taken else None


def attempt_delivery(*, db: Session, delivery_id: str, settings: Settings) -> str:
    """Make one attempt if the delivery is due; record it; schedule the next one. Return what happened."""
    lease = timedelta(seconds=settings.webhook_timeout_seconds + 30)
    delivery = _claim(db, delivery_id=delivery_id, lease=lease)
    if delivery is None:
        return "skipped"
    endpoint = db.get(WebhookEndpoint, delivery.endpoint_id)
    assert endpoint is not None  # deleting an endpoint deletes its deliveries
    url, secret, body = endpoint.url, endpoint.secret, delivery.body
    attempts, expires_at, event_type = delivery.attempts + 1, delivery.expires_at, delivery.event_type
    db.commit()  # no transaction (or SQLite lock) is held during the HTTP call
    started = utcnow()
    outcome = post_signed(url=url, secret=secret, msg_id=delivery_id, body=body, settings=settings)
    finished = utcnow()
    delay = retry_delay(attempts, settings=settings)
    values: dict = {"attempts": WebhookDelivery.attempts + 1, "last_status_code": outcome.status_code,
                    "last_error": outcome.error, "lease_until": None}
    if outcome.ok:
        values.update(status="succeeded", delivered_at=finished, next_attempt_at=None)
        result = "delivered"
    elif finished + timedelta(seconds=delay) > expires_at:
        values.update(status="failed", next_attempt_at=None)
        result = "gave_up"
    else:
        values.update(next_attempt_at=finished + timedelta(seconds=delay))
        result = "retry"
    recorded = db.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values),
                          execution_options=_NO_SYNC).rowcount
    if not recorded:  # the endpoint (and so this delivery) was deleted during the attempt
        db.rollback()
        return "gone"
    db.add(WebhookAttempt(delivery_id=delivery_id, started_at=started, finished_at=finished,
                          status_code=outcome.status_code, error=outcome.error))
    db.commit()
    if result == "retry":
        try:
            enqueue_webhook(delivery_id, countdown=delay, settings=settings)
        except Exception:
            log.warning("could not schedule the retry of %s; the sweep will", delivery_id, exc_info=True)
    log.info("webhook %s (%s) attempt %d: %s", delivery_id, event_type, attempts,
             outcome.status_code or outcome.error)
    return result


def overdue_deliveries(*, db: Session, grace: timedelta, now: datetime | None = None) -> list[str]:
    """Return pending deliveries due for longer than ``grace`` (their message lost) and restamp them.

    Restamping ``next_attempt_at`` to now keeps each one to one resend per ``grace``.
    """
    now = now or utcnow()
    ids = list(db.scalars(select(WebhookDelivery.id).where(
        WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at < now - grace,
        or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now)).limit(1000)))
    if ids:
        db.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(ids), WebhookDelivery.status == "pending")
                   .values(next_attempt_at=now), execution_options=_NO_SYNC)
    db.commit()
    return ids
