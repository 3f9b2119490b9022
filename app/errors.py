"""Typed application errors rendered as ``application/problem+json`` (RFC 9457)."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"


class AppError(Exception):
    """An error a client can act on; ``code`` is stable, ``detail`` is for people."""

    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers


class NotFound(AppError):
    status, code, title = 404, "not_found", "Not found"


class Unauthorized(AppError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"


class TooManyActiveJobs(AppError):
    status, code, title = 429, "too_many_active_jobs", "Too many active jobs"


class QuotaExceeded(AppError):
    status, code, title = 409, "storage_quota_exceeded", "Storage quota exceeded"


class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"


class InvalidRequest(AppError):
    status, code, title = 422, "invalid_request", "Invalid request"


class ServiceUnavailable(AppError):
    status, code, title = 503, "unavailable", "Service unavailable"


def problem_response(
    *, status: int, code: str, title: str, detail: str, instance: str,
    errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": f"https://distillery.dev/problems/{code}", "title": title,
                            "status": status, "detail": detail, "code": code, "instance": instance}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(jsonable_encoder(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def validation_errors(exc: ValidationError | RequestValidationError, *, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Turn pydantic errors into ``[{"field": "body.tasks[0].kind", "message": ..., "type": ...}]``."""
    out = []
    for err in exc.errors():
        loc = tuple(prefix) + tuple(err.get("loc", ()))
        field = ""
        for part in loc:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        out.append({"field": field, "message": err.get("msg", ""), "type": err.get("type", "")})
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the API raises as problem+json."""

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return problem_response(status=exc.status, code=exc.code, title=exc.title, detail=exc.detail,
                                instance=request.url.path, errors=exc.errors, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(status=422, code="validation_error", title="Validation error",
                                detail=detail, instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        return problem_response(status=exc.status_code, code=code, title=str(exc.detail), detail=str(exc.detail),
                                instance=request.url.path, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log (uvicorn logs it); the caller gets no internals.
        import logging

        logging.getLogger("distillery.api").exception("unhandled error on %s", request.url.path)
        return problem_response(status=500, code="internal_error", title="Internal server error",
                                detail="An unexpected error occurred; it has been logged.", instance=request.url.path)
