"""Request bodies: a JSON body is capped before it is read, and a body without credentials is
refused before a byte of it is read (FastAPI reads a JSON body before any dependency runs)."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from app.errors import problem_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Uploads stream under their own limit (settings.max_upload_bytes, app/files/uploads.py) and their route
# authenticates before it reads the stream.
STREAMED_PATHS = frozenset({"/v1/files"})


class BodyLimit:
    """ASGI middleware: 401 for a /v1 body without an Authorization header, 413 past `max_bytes`.

    A declared Content-Length over the cap is refused without reading; a body without one (chunked)
    is read up to the cap and refused at the first byte past it. What was read is replayed to the
    app, so handlers see the body as usual.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH")
                or scope["path"] in STREAMED_PATHS):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["path"].startswith("/v1/") and b"authorization" not in headers:
            await _problem(scope, receive, send, status=401, code="unauthorized",
                           title="missing API key: send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: a disconnect, as the server reports it

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _problem(scope, receive, send, status=413, code="payload_too_large",
                       title=f"the request body is larger than the limit of {self.max_bytes} bytes "
                             "(DISTILLERY_MAX_JSON_BYTES)")


async def _problem(scope: Scope, receive: Receive, send: Send, *, status: int, code: str,
                   title: str, headers: dict[str, str] | None = None) -> None:
    response = problem_response(status=status, code=code, title=title, detail=title,
                                instance=scope["path"], headers=headers)
    await response(scope, receive, send)
