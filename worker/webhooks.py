"""``deliver_webhook(delivery_id)`` and the sweep that resends deliveries whose message was lost.

Run by a worker on its own queue, with threads (deliveries wait on the network, not the CPU):
``celery -A worker.celery_app worker -Q distillery.webhooks -P threads -c 8``.
"""

import logging
import threading
from datetime import timedelta

from celery.signals import worker_ready

from app.config import Settings, get_settings
from app.db import session_scope
from app.queue import DELIVER_WEBHOOK_TASK, WEBHOOK_QUEUE, enqueue_webhook
from app.webhooks.delivery import attempt_delivery, overdue_deliveries
from worker.celery_app import celery_app

log = logging.getLogger("distillery.webhooks")


@celery_app.task(name=DELIVER_WEBHOOK_TASK)
def deliver_webhook(delivery_id: str) -> str:
    """Celery entry point: refetch the delivery by id and make one attempt if it is due."""
    settings = get_settings()
    with session_scope(settings.resolved_database_url) as db:
        return attempt_delivery(db=db, delivery_id=delivery_id, settings=settings)


def sweep_once(settings: Settings) -> list[str]:
    """Send again every pending delivery overdue by more than a sweep interval; return their ids."""
    with session_scope(settings.resolved_database_url) as db:
        ids = overdue_deliveries(db=db, grace=timedelta(seconds=settings.webhook_sweep_interval_seconds))
    for delivery_id in ids:
        enqueue_webhook(delivery_id, settings=settings)
    if ids:
        log.warning("resent %d overdue webhook deliveries (their messages were lost or never sent)", len(ids))
    return ids


@worker_ready.connect
def _start_sweeper(sender: object = None, **_: object) -> None:
    # Only in workers that consume the webhook queue: job workers fork a process per job, and a
    # thread of theirs holding a lock at a fork would leave the child stuck (see worker/reaper.py).
    queues = getattr(getattr(sender, "app", None), "amqp", None)
    if queues is None or WEBHOOK_QUEUE not in queues.queues.consume_from:
        return
    settings = get_settings()

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(settings.webhook_sweep_interval_seconds):
            try:
                sweep_once(settings)
            except Exception:  # a database or broker hiccup must not end the sweeps
                log.exception("webhook sweep failed; retrying next interval")

    threading.Thread(target=loop, name="distillery-webhook-sweep", daemon=True).start()
