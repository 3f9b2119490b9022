"""Request bodies: capped before they are read, and refused unread without credentials."""

import asyncio
import json
from typing import Any

from fastapi.testclient import TestClient

from app.api.body_limit import BodyLimit


def run(middleware: BodyLimit, *, path: str, headers: dict[bytes, bytes],
        chunks: list[bytes]) -> tuple[list[dict[str, Any]], int, bytes | None]:
    """Drive the middleware with a fake server: (messages sent, chunks read, body the app got)."""
    sent: list[dict[str, Any]] = []
    read = 0
    seen: dict[str, bytes] = {}

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1],
                    "more_body": read < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope, app_receive, app_send) -> None:
        seen["body"] = (await app_receive())["body"]
        await app_send({"type": "http.response.start", "status": 200, "headers": []})
        await app_send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers.items())}
    middleware.app = app
    asyncio.run(middleware(scope, receive, send))
    return sent, read, seen.get("body")


def status(sent: list[dict[str, Any]]) -> int:
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


AUTH = {b"authorization": b"Bearer dk_x", b"content-type": b"application/json"}


def test_a_body_without_credentials_is_refused_before_it_is_read():
    sent, read, _ = run(BodyLimit(None, max_bytes=1024), path="/v1/jobs",
                        headers={b"content-length": b"400000000"}, chunks=[b"x" * 4096] * 10)
    assert status(sent) == 401 and read == 0
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert body["code"] == "unauthorized"


def test_a_declared_length_over_the_cap_is_refused_unread():
    sent, read, _ = run(BodyLimit(None, max_bytes=1024), path="/v1/jobs",
                        headers={**AUTH, b"content-length": b"400000000"}, chunks=[b"x"] * 3)
    assert status(sent) == 413 and read == 0


def test_a_chunked_body_is_read_only_up_to_the_cap():
    sent, read, got = run(BodyLimit(None, max_bytes=1024), path="/v1/jobs", headers=AUTH,
                          chunks=[b"x" * 600] * 100)  # 60 kB, no Content-Length
    assert status(sent) == 413 and read == 2 and got is None


def test_a_body_under_the_cap_reaches_the_app_whole():
    sent, _, got = run(BodyLimit(None, max_bytes=1024), path="/v1/jobs", headers=AUTH,
                       chunks=[b'{"a": ', b"1}"])
    assert status(sent) == 200 and got == b'{"a": 1}'


def test_uploads_stream_under_their_own_limit():
    sent, read, got = run(BodyLimit(None, max_bytes=1024), path="/v1/files",
                          headers={b"content-length": b"8000"}, chunks=[b"x" * 8000])
    assert status(sent) == 200 and got == b"x" * 8000  # the upload route checks its own key


def test_the_real_app_caps_a_job_spec(client: TestClient, auth: dict[str, str], spec: dict):
    spec["name"] = "x" * 200
    spec["padding"] = "y" * (2 * 1024**2)  # 2 MiB: past the 1 MiB default
    response = client.post("/v1/jobs", headers=auth, json=spec)
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "payload_too_large"
    anonymous = client.post("/v1/jobs", json={"name": "x"})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
