"""OpenAPI descriptions of the problem+json error responses each route can give."""

from typing import Any

from app.schemas import Problem

_WHY = {
    400: "Bad request",
    401: "Missing, invalid or revoked API key",
    404: "No such resource for this tenant",
    409: "The resource is in a state that forbids this",
    416: "Range not satisfiable",
    422: "Validation error: `errors` lists each field at fault",
    503: "A dependency (database or broker) is unavailable",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return ``responses=`` entries documenting these error statuses as problem+json."""
    return {
        status: {"model": Problem, "description": _WHY[status],
                 "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for status in statuses
    }
