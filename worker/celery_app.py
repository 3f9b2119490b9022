"""The worker's Celery app: shared config from ``app.queue`` plus the tasks and the reaper."""

from celery import Celery
from celery.signals import worker_ready

from app.config import get_settings
from app.queue import celery_config

celery_app = Celery("distillery", include=["worker.tasks"])
celery_app.conf.update(celery_config(get_settings()))


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    from worker.reaper import start_reaper_thread

    start_reaper_thread(get_settings())
