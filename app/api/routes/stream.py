"""Server-sent events: a job's events as they happen, resumable with Last-Event-ID."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import JobDep, SettingsDep
from app.api.problems import problems
from app.config import Settings
from app.db import session_scope
from app.models import TERMINAL_STATUSES, Job
from app.services.events import list_events

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["jobs"])
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


def _next_batch(settings: Settings, job_id: str, after: int) -> tuple[list[dict], bool]:
    with session_scope(settings.resolved_database_url) as db:
        rows, _ = list_events(db=db, job_id=job_id, after=after, limit=500)
        status = db.get(Job, job_id).status
        batch = [{"seq": e.seq, "kind": e.kind, "data": e.data, "created_at": e.created_at.isoformat()} for e in rows]
    return batch, status in TERMINAL_STATUSES


async def _event_source(settings: Settings, job_id: str, after: int) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    idle = 0.0
    while True:
        batch, ended = await run_in_threadpool(_next_batch, settings, job_id, after)
        for event in batch:
            after = event["seq"]
            yield f"id: {event['seq']}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"
        if ended and not batch:
            return  # everything up to the final event has been sent
        idle = 0.0 if batch else idle + POLL_SECONDS
        if idle >= KEEPALIVE_SECONDS:
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL_SECONDS)


@router.get("/events/stream", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "One SSE message per event: id = seq, event = kind"},
    **problems(401, 404, 422)})
async def stream_job_events(
    job: JobDep, settings: SettingsDep, after: Annotated[int, Query(ge=0)] = 0,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """Follow a job's events live; a reconnect with Last-Event-ID resumes after that event."""
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
    return StreamingResponse(_event_source(settings, job.id, start), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
