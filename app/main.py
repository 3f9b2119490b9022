"""FastAPI application factory."""

from fastapi import FastAPI

from app.api.routes import artifacts, health, jobs
from app.errors import install_error_handlers

DESCRIPTION = """Distillery trains one small multi-task student from your teachers.

Authenticate with `Authorization: Bearer <api key>`. Every error is `application/problem+json`
(RFC 9457) with a stable `code` and, for validation errors, `errors[].field` naming the field at fault.
"""


def create_app() -> FastAPI:
    """Build the API: routers and problem+json error handlers."""
    app = FastAPI(title="Distillery", version="0.1.0", description=DESCRIPTION)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(artifacts.router)
    return app


app = create_app()
