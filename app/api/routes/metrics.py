"""Prometheus metrics on the API's port: no API key, unless DISTILLERY_METRICS_TOKEN is set."""

import secrets

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import SettingsDep
from app.api.problems import problems
from app.errors import Unauthorized
from app.observability.metrics import scrape

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={
    200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}, **problems(401)})
def get_metrics(request: Request, settings: SettingsDep) -> Response:
    """Return the API's metrics: requests, latency, jobs by status, queue depth, validator pool."""
    # sync: the scrape reads the database and the broker, so it runs in the threadpool
    if settings.metrics_token:
        offered = request.headers.get("authorization", "")
        expected = f"Bearer {settings.metrics_token}"
        if not secrets.compare_digest(offered.encode(), expected.encode()):
            raise Unauthorized("GET /metrics needs Authorization: Bearer <DISTILLERY_METRICS_TOKEN>",
                               headers={"WWW-Authenticate": "Bearer"})
    return Response(scrape(settings), media_type=CONTENT_TYPE_LATEST)
