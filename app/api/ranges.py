"""Byte-range responses for artifacts that are not local files (S3): Range, If-Range, HEAD, ETag."""

import re

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from app.errors import AppError
from app.models import Artifact
from app.storage import ArtifactStore

_SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(AppError):
    status, code, title = 416, "range_not_satisfiable", "Range not satisfiable"


def _wanted_range(request: Request, etag: str, size: int) -> tuple[int, int] | None:
    """Return (start, end) inclusive for a satisfiable single range, None for the whole file."""
    header = request.headers.get("range")
    if header is None:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != etag:
        return None  # the client's copy is stale: send everything
    match = _SINGLE_RANGE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        return None  # multi-range or malformed: RFC 9110 allows ignoring it
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiable(f"range {header} is outside the {size} bytes", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def ranged_response(*, request: Request, artifact: Artifact, store: ArtifactStore) -> Response:
    etag = f'"{artifact.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0",
               "Content-Disposition": f'attachment; filename="{artifact.name}"'}
    wanted = _wanted_range(request, etag, artifact.size)
    start, end, status = (0, artifact.size - 1, 200) if wanted is None else (*wanted, 206)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{artifact.size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD" or artifact.size == 0:
        return Response(status_code=status, headers=headers, media_type=artifact.media_type)
    return StreamingResponse(store.read_range(artifact.path, start, end), status_code=status, headers=headers,
                             media_type=artifact.media_type)
