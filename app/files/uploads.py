"""Stream a multipart upload straight to disk while hashing it, stopping at the size limit."""

import hashlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import AppError

MAX_FIELD_BYTES = 1024  # `purpose` and other small text fields


class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class BadUpload(AppError):
    status, code, title = 400, "invalid_upload", "Invalid upload"


@dataclass
class ReceivedUpload:
    path: Path  # the temporary file holding the `file` part
    filename: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


def safe_filename(name: str) -> str:
    """Keep a display name only: no directories, no control characters."""
    base = re.split(r"[\\/]", name)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")
    return cleaned[:200] or "upload"


async def receive_upload(*, content_type: str, chunks: AsyncIterator[bytes], tmp_dir: Path,
                         max_bytes: int) -> ReceivedUpload:
    """Parse ``multipart/form-data`` from ``chunks``; the `file` part goes to a temp file in ``tmp_dir``."""
    mime, params = parse_options_header(content_type)
    if mime != b"multipart/form-data" or b"boundary" not in params:
        raise BadUpload("send multipart/form-data with a `file` part and a `purpose` field")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp_path = tmp_dir / f".upload-{os.urandom(8).hex()}"
    state = {"name": None, "filename": None, "size": 0, "header_field": b"", "header_value": b"", "headers": {}}
    digest = hashlib.sha256()
    fields: dict[str, bytearray] = {}
    out = tmp_path.open("wb")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header_field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["header_value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header_field"].lower()] = state["header_value"]
        state["header_field"], state["header_value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = disposition.get(b"name", b"").decode(errors="replace")
        raw_filename = disposition.get(b"filename")
        state["filename"] = raw_filename.decode(errors="replace") if raw_filename is not None else None
        state["headers"] = {}

    def on_part_data(data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if state["name"] == "file":
            state["size"] += len(piece)
            if state["size"] > max_bytes:
                raise PayloadTooLarge(f"the file is larger than the limit of {max_bytes} bytes")
            digest.update(piece)
            out.write(piece)
        else:
            buf = fields.setdefault(state["name"], bytearray())
            buf += piece
            if len(buf) > MAX_FIELD_BYTES:
                raise BadUpload(f"form field {state['name']!r} is too long")

    parser = MultipartParser(params[b"boundary"], {
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
    })
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except AppError:
        out.close()
        tmp_path.unlink(missing_ok=True)
        raise
    except Exception as exc:  # malformed multipart
        out.close()
        tmp_path.unlink(missing_ok=True)
        raise BadUpload(f"malformed multipart body: {exc}") from exc
    out.close()
    if state["filename"] is None and "file" not in fields and state["size"] == 0:
        tmp_path.unlink(missing_ok=True)
        raise BadUpload("the form has no `file` part", errors=[{"field": "body.file", "message": "required",
                                                              "type": "missing"}])
    return ReceivedUpload(path=tmp_path, filename=safe_filename(state["filename"] or "upload"),
                          size=state["size"], sha256=digest.hexdigest(),
                          fields={k: v.decode(errors="replace") for k, v in fields.items()})
