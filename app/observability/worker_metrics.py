"""A Celery worker's Prometheus metrics, served by the worker's main process on its own port.

Each job runs in a fresh prefork child, so the metrics are written through prometheus-client's
multiprocess mode: every child writes its values to files in a folder of the worker's own (set
up before prometheus-client is imported), and the main process's HTTP server sums them. Counters
and histograms keep a finished child's values; the current-job gauge of a child that has exited is
dropped at the next scrape.
"""

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.config import Settings

log = logging.getLogger("distillery.worker.metrics")
_LIVE_GAUGE_PREFIXES = ("gauge_livesum_", "gauge_liveall_", "gauge_livemax_", "gauge_livemin_",
                        "gauge_livemostrecent_")


def prepare_multiprocess_dir(settings: Settings) -> Path | None:
    """Give this worker a fresh multiprocess folder (before any metric exists); None when metrics are off."""
    if not settings.worker_metrics_port:
        return None
    folder = settings.data_dir.resolve() / "metrics" / f"worker-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    if "prometheus_client.values" in sys.modules:  # imported early by something: switch it over
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    return folder


class _LiveChildrenCollector:
    """The multiprocess folder's metrics, after dropping the live gauges of exited children."""

    def __init__(self, folder: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.folder = folder
        self.inner = MultiProcessCollector(None, path=str(folder))

    def collect(self) -> Iterator[Any]:
        from prometheus_client import multiprocess

        for path in self.folder.glob("gauge_live*.db"):
            pid = path.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                multiprocess.mark_process_dead(int(pid), path=str(self.folder))
        yield from self.inner.collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) is not running a job
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def start_metrics_server(settings: Settings, folder: Path) -> None:
    """Serve the folder's metrics on the worker metrics port (a daemon thread of the main process)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(_LiveChildrenCollector(folder))
    try:
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=registry)
    except OSError as exc:  # e.g. a second worker on this host with the same port: run, unscraped
        log.error("worker metrics: cannot listen on %s:%d (%s); this worker serves no metrics",
                  settings.worker_metrics_host, settings.worker_metrics_port, exc)
        return
    log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host, settings.worker_metrics_port)


def remove_multiprocess_dir(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# The metrics themselves are created on first use, in the child that runs a job, after the folder
# is set (a Counter made at import time in a process without the folder would stay in memory).
_metrics: dict[str, Any] = {}


def _get() -> dict[str, Any]:
    if not _metrics:
        from prometheus_client import Counter, Gauge, Histogram

        durations = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
        _metrics.update(
            jobs=Counter("distillery_worker_jobs", "Job messages this worker handled, by outcome", ["outcome"]),
            stage=Histogram("distillery_worker_stage_duration_seconds", "Seconds per finished training stage",
                            ["stage"], buckets=durations),
            epoch=Histogram("distillery_worker_epoch_duration_seconds", "Seconds per training epoch", ["stage"],
                            buckets=durations),
            rows=Gauge("distillery_worker_rows_per_second",
                       "Training rows per second of the last finished stage of each kind (optimiser steps x "
                       "batch size / stage seconds: an epoch's last, partial batch counts whole)", ["stage"],
                       multiprocess_mode="mostrecent"),
            cache=Counter("distillery_worker_teacher_cache", "Teacher outputs read from the cache (hit) or "
                          "computed (miss)", ["result"]),
            current=Gauge("distillery_worker_current_job", "1 for the job this worker is running",
                          ["job_id"], multiprocess_mode="livesum"),
        )
    return _metrics


def stage_kind(stage: str) -> str:
    """Return a bounded label for a stage name: teacher names are the user's, so all are "teacher"."""
    return "teacher" if stage.startswith("teacher:") else stage


@contextmanager
def running_job(job_id: str) -> Iterator[None]:
    """Mark ``job_id`` as this worker's current job for the block."""
    gauge = _get()["current"].labels(job_id)
    gauge.set(1)
    try:
        yield
    finally:
        gauge.set(0)


def job_handled(outcome: str) -> None:
    _get()["jobs"].labels(outcome).inc()


def epoch_ended(*, stage: str, seconds: float) -> None:
    _get()["epoch"].labels(stage_kind(stage)).observe(seconds)


def job_results(results: dict[str, Any], *, batch_size: int) -> None:
    """Record a finished job's stage times, rows per second and teacher-cache use."""
    metrics = _get()
    for stage in results.get("stages", []):
        kind, seconds = stage_kind(stage["name"]), stage.get("seconds") or 0.0
        metrics["stage"].labels(kind).observe(seconds)
        if seconds > 0 and stage.get("steps"):
            metrics["rows"].labels(kind).set(stage["steps"] * batch_size / seconds)
    for status in (results.get("teacher_cache") or {}).values():
        if status in ("hit", "miss"):
            metrics["cache"].labels(status).inc()
