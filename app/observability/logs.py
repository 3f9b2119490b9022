"""Log lines as JSON objects (a setting), each with the request id or the job id it belongs to.

A request id is set by ``RequestIdMiddleware`` for the duration of one HTTP request (and returned
as ``X-Request-ID``); a job id is set by the worker while it runs that job. Both live in context
variables, so every line logged meanwhile, by our code, uvicorn or Celery, carries them.
Keys, tokens, URL passwords and URL signatures are scrubbed from every JSON line.
"""

import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)

# A caller's own X-Request-ID is kept when it looks like an id (it ends up in logs: no free text).
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# What must never reach a log: API keys, bearer tokens, URL passwords, presigned-URL signatures.
_SECRETS = (
    (re.compile(r"dk_[A-Za-z0-9_-]{8,}"), "dk_[redacted]"),
    (re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), r"\1[redacted]"),
    (re.compile(r"(://[^/\s:@]+:)[^@\s/]+@"), r"\1[redacted]@"),
    (re.compile(r"(?i)((?:X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId)=)[^&\s\"']+"),
     r"\1[redacted]"),
)
# Standard LogRecord attributes: anything else on a record came from `extra=` and is kept.
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message", "taskName",
                                                         "request_id", "job_id"}


def scrub(text: str) -> str:
    """Return ``text`` with keys, tokens, URL passwords and URL signatures replaced."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class ContextFilter(logging.Filter):
    """Put the current request id and job id on every record (None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = job_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id / job_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "job_id"):
            if getattr(record, key, None) is not None:
                line[key] = getattr(record, key)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in line and not key.startswith("_"):
                line[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(line, default=str))


# Loggers that install their own handlers (uvicorn) are routed to the root handler instead.
_HANDLER_OWNING_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task")


def configure_json_logging(level: str = "INFO") -> None:
    """Send every log line to stderr as JSON through one root handler (plain text is left as
    uvicorn and Celery set it up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # a Python warning becomes a JSON line too
    for name in _HANDLER_OWNING_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every line logged in the block with ``job_id``."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


class RequestIdMiddleware:
    """Give each HTTP request an id (the caller's X-Request-ID if it looks like one), log under it,
    and return it as X-Request-ID. Pure ASGI: no per-request task or body buffering."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = offered if _CLIENT_ID.fullmatch(offered) else uuid.uuid4().hex
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
