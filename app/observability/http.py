"""Wire request ids, request metrics and JSON logs into the FastAPI app."""

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.config import Settings
from app.observability.logs import RequestIdMiddleware, configure_json_logging
from app.observability.metrics import MetricsMiddleware


def instrument(app: FastAPI, settings: Settings) -> None:
    """Add the middlewares outermost (call after every other middleware), so that refused requests
    are counted and carry an id too; switch the process to JSON logs when configured."""
    if settings.log_format == "json":
        configure_json_logging(settings.log_level)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost: every line logged for a request has its id


def operation_id(route: APIRoute) -> str:
    """Return ``{tag}-{name}`` (``jobs-create_job``): stable, and read well in generated clients."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name
