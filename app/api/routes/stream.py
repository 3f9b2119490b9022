"""Server-sent events: a job's events as they happen, resumable with Last-Event-ID."""

from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.deps import EventCursor, SessionDep, SettingsDep, TenantDep, release_session
from app.api.problems import problems
from app.services.streams import EventStream, open_event_stream

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["jobs"])


class EventStreamResponse(StreamingResponse):
    """An SSE response that gives its stream's slot back however it ends (finished, disconnected, cancelled)."""

    def __init__(self, stream: EventStream):
        super().__init__(stream.messages(), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stream.close()  # a generator that never started would not run its own `finally`


@router.get("/events/stream", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "One SSE message per event: id = seq, event = kind"},
    **problems(401, 404, 422),
    429: {**problems(429)[429], "description": "Rate limit, or the tenant's open-stream cap "
                                               "(DISTILLERY_MAX_STREAMS_PER_TENANT); see Retry-After"}})
async def stream_job_events(
    tenant: TenantDep, db: SessionDep, settings: SettingsDep, job_id: Annotated[str, Path(max_length=64)],
    after: EventCursor = 0,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """Follow a job's events live; a reconnect with Last-Event-ID resumes after that event."""
    # The key check's session would close only when the response ends, hours later for a stream: each
    # open stream held a pooled connection, and 15 streams used up SQLite's pool. Give it back now.
    release_session(db)
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
    stream = await open_event_stream(url=settings.resolved_database_url, tenant=tenant, job_id=job_id,
                                     after=start, cap=settings.max_streams_per_tenant)
    return EventStreamResponse(stream)
