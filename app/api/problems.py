"""OpenAPI descriptions of the problem+json error responses each route can give."""

from typing import Any

from app.schemas import Problem

_WHY = {
    400: "Bad request",
    401: "Missing, invalid or revoked API key",
    403: "The API key lacks the scope for this call",
    404: "No such resource for this tenant",
    409: "The resource is in a state that forbids this (or a storage quota is used up)",
    413: "The upload is larger than the limit",
    416: "Range not satisfiable",
    422: "Validation error: `errors` lists each field at fault",
    429: "Rate limit or active-job cap reached; see Retry-After",
    503: "A dependency (database or broker) is unavailable",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return ``responses=`` entries documenting these error statuses as problem+json.

    Every authenticated call (401 listed) is also rate limited, so 429 is added with it.
    """
    if 401 in statuses and 429 not in statuses:
        statuses = (*statuses, 429)
    return {
        status: {"model": Problem, "description": _WHY[status],
                 "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for status in statuses
    }
