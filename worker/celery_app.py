"""The worker's Celery app: shared config from ``app.queue`` plus the tasks and the reaper."""

from celery import Celery
from celery.signals import worker_init, worker_ready

from app.config import get_settings
from app.queue import celery_config

celery_app = Celery("distillery", include=["worker.tasks"])
celery_app.conf.update(celery_config(get_settings()))


@worker_init.connect
def _preload_engine(**_: object) -> None:
    """Import the engine and every dataset loader once in the main process, before the pool forks.

    Each job runs in a fresh pool process (one task per child); forked children inherit these
    modules instead of importing torch, scikit-learn and pandas again for every job. CUDA is not
    touched here, so forking stays safe on GPU workers.
    """
    import app.training.loop  # noqa: F401
    from app.training.datasets.registry import import_loaders

    import_loaders()
    # Every job draws report.png: import matplotlib and load its font list here once, not in each
    # child (drawing the figure is still per job, and was most of a tiny job's time when profiled).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.font_manager  # noqa: F401
    import matplotlib.pyplot  # noqa: F401


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    from worker.reaper import start_reaper_thread

    start_reaper_thread(get_settings())
