"""Celery client configuration and ``enqueue(job_id)``; the API sends tasks by name, never imports them."""

import logging
import os
from functools import lru_cache

from celery import Celery

from app.config import Settings, get_settings

RUN_JOB_TASK = "distillery.run_job"
QUEUE_NAME = "distillery"
log = logging.getLogger("distillery.queue")
# Webhook deliveries have their own queue and worker (`-Q distillery.webhooks -P threads`): on the
# job queue they would wait behind the very job whose start they announce.
DELIVER_WEBHOOK_TASK = "distillery.deliver_webhook"
WEBHOOK_QUEUE = "distillery.webhooks"


def celery_config(settings: Settings) -> dict:
    """Return the Celery settings shared by the API (producer) and the workers (consumers)."""
    transport_options: dict = {"visibility_timeout": settings.visibility_timeout_seconds}
    if settings.resolved_broker_url.startswith("filesystem"):
        folder = settings.broker_dir
        for sub in ("queue", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            # The filesystem transport polls its folder (kombu's default: every 1 s), so a job
            # waited up to a second on an idle or just-freed worker; a listing every 0.1 s is cheap.
            "polling_interval": 0.1,
        }
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": QUEUE_NAME,
        "task_ignore_result": True,  # the database owns job state, not a result backend
        "task_serializer": "json",
        "accept_content": ["json"],
        # Long GPU jobs: ack only when done, give a lost worker's message back, take one at a time,
        # and start a fresh process per job so memory (and CUDA context) is returned.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # SIGTERM: wait this long, then cold-shut down; the task releases its job back to the queue.
        "worker_soft_shutdown_timeout": 10.0,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_hijack_root_logger": False,
    }


@lru_cache(maxsize=4)
def _producer(broker_url: str, settings_json: str) -> Celery:
    settings = Settings.model_validate_json(settings_json)
    app = Celery("distillery")
    app.conf.update(celery_config(settings))
    return app


def get_producer(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    return _producer(settings.resolved_broker_url, settings.model_dump_json())


def enqueue(job_id: str, *, settings: Settings | None = None) -> None:
    """Send ``run_job(job_id)``; call only after the job row is committed."""
    get_producer(settings).send_task(RUN_JOB_TASK, args=[job_id], queue=QUEUE_NAME)
    log.info("job %s queued", job_id, extra={"job_id": job_id})


def enqueue_webhook(delivery_id: str, *, countdown: float = 0.0, settings: Settings | None = None) -> None:
    """Send ``deliver_webhook(delivery_id)``, due after ``countdown`` seconds; call after the commit."""
    get_producer(settings).send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=WEBHOOK_QUEUE,
                                     countdown=countdown if countdown > 0 else None)


def queue_depth(settings: Settings | None = None) -> int:
    """Return how many job messages wait in the broker (a message a worker holds is not counted)."""
    with get_producer(settings).connection_for_read() as conn:
        try:
            return conn.default_channel.queue_declare(queue=QUEUE_NAME, passive=True).message_count
        except conn.channel_errors:  # never declared yet, or Redis dropped the emptied list
            return 0


def check_broker(settings: Settings | None = None) -> None:
    """Raise if the broker cannot be reached within a couple of seconds."""
    settings = settings or get_settings()
    producer = get_producer(settings)  # also creates the filesystem transport's folders
    if settings.resolved_broker_url.startswith("filesystem"):
        folder = settings.broker_dir / "queue"
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise ConnectionError(f"broker folder {folder} is missing or read-only")
        return
    with producer.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
