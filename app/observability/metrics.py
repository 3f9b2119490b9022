"""The API's Prometheus metrics: requests by route template and status, their latency, and the
service's state (jobs by status, queue depth, validator pool) read at scrape time.

With several uvicorn workers, set ``PROMETHEUS_MULTIPROC_DIR`` (an empty folder) before they
start: each worker then writes its counters there and any worker's ``/metrics`` sums them all.
"""

import logging
import os
import time
from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings

log = logging.getLogger("distillery.metrics")

REQUESTS = Counter("distillery_http_requests", "HTTP requests answered, by method, route template and status",
                   ["method", "route", "status"])
LATENCY = Histogram("distillery_http_request_duration_seconds",
                    "Time from a request's arrival to its last response byte, by route template",
                    ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
UNMATCHED = "<unmatched>"  # a path no route serves: one label value, whatever was asked for


def route_template(scope: Scope) -> str:
    """Return the matched route's path template (``/v1/jobs/{job_id}``), never the raw path."""
    route = scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED


class MetricsMiddleware:
    """Count each request and time it, labelled by route template and status (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before starting a response

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            route = route_template(scope)
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


class ServiceStateCollector:
    """Gauges read when scraped: jobs by status (database), queue depth (broker), validator pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._queue_depth()
        yield from self._validator()

    def _jobs(self) -> Iterator[Metric]:
        from app.db import session_scope
        from app.services.job_counts import count_jobs_by_status

        try:
            with session_scope(self.settings.resolved_database_url) as db:
                counts = count_jobs_by_status(db=db)
        except Exception:  # a scrape must not fail because the database is down; up==0 says so
            log.warning("metrics: cannot count jobs", exc_info=True)
            return
        gauge = GaugeMetricFamily("distillery_jobs", "Jobs by status (all tenants)", labels=["status"])
        for status, count in counts.items():
            gauge.add_metric([status], count)
        yield gauge

    def _queue_depth(self) -> Iterator[Metric]:
        from app.queue import queue_depth

        try:
            depth = queue_depth(self.settings)
        except Exception:
            log.warning("metrics: cannot read the queue depth", exc_info=True)
            return
        yield GaugeMetricFamily("distillery_queue_depth", "Messages waiting in the job queue (broker)", value=depth)

    def _validator(self) -> Iterator[Metric]:
        from app.services.validator import pool_state

        state = pool_state(self.settings)
        gauge = GaugeMetricFamily("distillery_validator_processes",
                                  "Spec dry-run processes of this API process: configured and alive",
                                  labels=["state"])
        gauge.add_metric(["configured"], state["configured"])
        gauge.add_metric(["alive"], state["alive"])
        yield gauge
        yield GaugeMetricFamily("distillery_validator_busy", "Dry runs running or waiting in this API process",
                                value=state["busy"])


class _Scrape:
    """What one scrape reads: this process's (or every worker's) metrics, then the service state."""

    def __init__(self, parts: Iterable[object]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()  # type: ignore[attr-defined]


def scrape(settings: Settings) -> bytes:
    """Return the exposition text of the API's metrics."""
    from prometheus_client import generate_latest

    folder = multiprocess_dir()
    if folder:
        process_metrics = CollectorRegistry()
        MultiProcessCollector(process_metrics, path=folder)
    else:
        process_metrics = REGISTRY
    return generate_latest(_Scrape([process_metrics, ServiceStateCollector(settings)]))  # type: ignore[arg-type]
