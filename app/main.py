"""FastAPI application factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fastapi.middleware.cors import CORSMiddleware

from app.api.body_limit import BodyLimit
from app.api.routes import artifacts, catalog, files, health, jobs, keys, stream, ui
from app.api.routes import metrics, searches
from app.config import get_settings
from app.errors import install_error_handlers
from app.observability.http import instrument, operation_id
from app.webhooks import routes as webhooks

DESCRIPTION = """Distillery trains one small multi-task student from your teachers.

Authenticate with `Authorization: Bearer <api key>`. Every error is `application/problem+json`
(RFC 9457) with a stable `code` and, for validation errors, `errors[].field` naming the field at fault.
"""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    from app.services import validator

    validator.warm(get_settings())  # the spec dry-run process imports torch now, not on the first submit
    yield


def create_app() -> FastAPI:
    """Build the API: routers and problem+json error handlers."""
    app = FastAPI(title="Distillery", version="0.1.0", description=DESCRIPTION, lifespan=_lifespan,
                  generate_unique_id_function=operation_id)
    install_error_handlers(app)
    origins = get_settings().cors_origins
    if origins:  # off unless configured
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Range"])
    # Outermost: an oversized or anonymous body is refused before anything reads it.
    app.add_middleware(BodyLimit, max_bytes=get_settings().max_json_bytes)
    instrument(app, get_settings())  # request ids and metrics: outside the body limit, so its refusals count
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(artifacts.router)
    app.include_router(stream.router)
    app.include_router(files.router)
    app.include_router(catalog.router)
    app.include_router(keys.router)
    app.include_router(metrics.router)
    app.include_router(webhooks.router)
    app.include_router(searches.router)
    app.include_router(ui.router)
    return app


app = create_app()
