"""The worker's Celery app: shared config from ``app.queue`` plus the tasks and the reaper."""

import logging
import multiprocessing.process

from celery import Celery
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from app.config import get_settings
from app.observability import worker_metrics
from app.observability.logs import configure_json_logging
from app.queue import QUEUE_NAME, celery_config

# Before any metric exists: the pool's children write their metrics into this worker's folder.
METRICS_DIR = worker_metrics.prepare_multiprocess_dir(get_settings())
celery_app = Celery("distillery", include=["worker.tasks", "worker.webhooks"])
celery_app.conf.update(celery_config(get_settings()))
# Prefork, but a finished job's child is replaced at once rather than on a 5 s timer (worker/pool.py).
celery_app.conf.worker_pool = "worker.pool:RecyclingTaskPool"


@worker_init.connect
def _preload_engine(sender: object = None, **_: object) -> None:
    """Import the engine and every dataset loader once in the main process, before the pool forks.

    Each job runs in a fresh pool process (one task per child); forked children inherit these
    modules instead of importing torch, scikit-learn and pandas again for every job. CUDA is not
    touched here, so forking stays safe on GPU workers.
    """
    if QUEUE_NAME not in sender.app.amqp.queues.consume_from:  # type: ignore[attr-defined]
        return  # a webhook worker (-Q distillery.webhooks) trains nothing: no torch in it
    import gc
    import importlib

    from app.training import import_loaders, train  # noqa: F401  (train: the engine and torch)

    import_loaders()
    # Every job draws report.png: select the backend before pyplot is imported.
    import matplotlib

    matplotlib.use("Agg")
    for module in PRELOADED_MODULES:
        importlib.import_module(module)
    # Celery runs gc.collect() before every fork of a pool process; over the objects of everything
    # imported above that took 0.26 s per job (cProfile of the pool's _create_worker_process).
    # Frozen objects are never scanned again (and their pages are not dirtied by the collector in
    # the children, which keeps more of them shared): the collection before a fork sees only what
    # the main process created since.
    gc.freeze()


# Modules the engine imports lazily (the API and the CLI must not pay for them) that a job would
# otherwise import again in every fresh child. Measured in a child after the imports above
# (2-core CPU): torch._dynamo 1.0 s (the first torch.optim optimizer imports it),
# sklearn.datasets 0.9 s (digits-mt, penguins, yeast), matplotlib's pyplot and font list (report.png),
# cffi 0.05 s (Celery's child initializer sets the parent-death signal through it), tensorboardX
# 0.57 s under load (tensorboard.zip's writer, imported at a job's first epoch end), optuna 0.39 s at load
# 5.7 (a search's trial steps its search in the child when it ends). Not onnxruntime:
# imported before fork, a child that later exits hangs in its thread-pool destructor.
PRELOADED_MODULES = (
    "cffi",
    "tensorboardX",
    "torch._dynamo",
    "sklearn.datasets",
    "sklearn.model_selection",
    "matplotlib.font_manager",
    "matplotlib.pyplot",
    "mnist1d.data",
    "onnx",
    "optuna",
)


@worker_init.connect
def _plan_device_slots(sender: object = None, **_: object) -> None:
    """Split a job worker's devices among its pool processes (worker/slots.py), or refuse to start
    a GPU worker whose processes would share a GPU."""
    if QUEUE_NAME not in sender.app.amqp.queues.consume_from:  # type: ignore[attr-defined]
        return
    import logging

    from worker.slots import CUDA, SlotError, plan_slots, set_plan

    concurrency = sender.concurrency  # type: ignore[attr-defined]
    try:
        plan = plan_slots(get_settings(), concurrency if isinstance(concurrency, int) else 1)
        if plan.accelerator == CUDA and not isinstance(concurrency, int):  # "auto": sized on CPUs
            raise SlotError(f"worker concurrency {concurrency!r}: give a GPU worker -c N (pool "
                            "processes) so that each gets its own GPUs")
    except SlotError as exc:
        logging.getLogger("distillery.worker").critical("refusing to start: %s", exc)
        raise SystemExit(f"distillery worker refuses to start: {exc}") from None
    set_plan(plan, node=sender.hostname)  # type: ignore[attr-defined]


@worker_process_init.connect
def _enter_device_slot(**_: object) -> None:
    """In each new pool process, before any CUDA use: take the slot of its pool index."""
    from billiard.process import current_process

    from worker.slots import enter_slot

    enter_slot(getattr(current_process(), "index", 0))


# multiprocessing's main-process class (it deletes the name): taken here, in the worker's main process.
_MAIN_PROCESS_TYPE = type(multiprocessing.process.current_process())


@worker_process_init.connect
def _allow_rank_processes(**_: object) -> None:
    """Let a pool process start a data-parallel job's ranks (app/training/launch.py).

    billiard installs its pool process as multiprocessing's current process: daemonic, so
    multiprocessing refused it children ("daemonic processes are not allowed to have children":
    every resources.devices job failed so in a real worker), and with billiard's authkey, which
    multiprocessing's spawn cannot pickle. To multiprocessing (torch.multiprocessing's spawn
    context) the pool process is a main process of its own; billiard keeps its own record. The
    ranks die with the pool process anyway (PR_SET_PDEATHSIG), and launch.py joins or kills them
    before a job returns.
    """
    multiprocessing.process._current_process = _MAIN_PROCESS_TYPE()  # type: ignore[attr-defined]


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    from worker.reaper import start_reaper_thread
    from worker.slots import declare_devices

    settings = get_settings()
    # The sweep also declares this worker's devices (the API's dry run reads them), at once first.
    start_reaper_thread(settings, each_sweep=lambda: declare_devices(settings))


@worker_ready.connect
def _start_search_controller(sender: object = None, **_: object) -> None:
    """Job workers step the searches (worker/search.py); a webhook worker does not."""
    if QUEUE_NAME not in sender.app.amqp.queues.consume_from:  # type: ignore[attr-defined]
        return
    from worker.search import start_search_thread

    start_search_thread(get_settings())


@worker_init.connect
def _start_metrics_server(**_: object) -> None:
    if METRICS_DIR is not None:
        worker_metrics.start_metrics_server(get_settings(), METRICS_DIR)


@worker_shutdown.connect
def _retire_devices(**_: object) -> None:
    """A job worker stopping is at once no longer counted by the API's placement checks."""
    from worker.slots import retire_devices

    try:
        retire_devices(get_settings())
    except Exception as exc:  # noqa: BLE001 - the database may be gone; the row then ages out by itself
        logging.getLogger("distillery.worker").warning("could not mark this worker stopped (%s: %s); it "
                                                       "stays live for 3 sweeps", type(exc).__name__, exc)


@worker_shutdown.connect
def _remove_metrics_dir(**_: object) -> None:
    if METRICS_DIR is not None:
        worker_metrics.remove_multiprocess_dir(METRICS_DIR)


if get_settings().log_format == "json":
    @setup_logging.connect
    def _json_logs(**_: object) -> None:
        """Celery leaves logging to us once this signal has a receiver: JSON lines with the job id."""
        configure_json_logging(get_settings().log_level)
