"""Search routes: submit a goal, list, get (trials, front, best), cancel, events (+ SSE), artifacts."""

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from app.api.deps import (
    EventCursor,
    SessionDep,
    SettingsDep,
    TenantDep,
    release_session,
)
from app.api.problems import problems
from app.api.ranges import ranged_response
from app.api.routes.stream import EventStreamResponse
from app.job_status import JobStatus
from app.models import Search
from app.schemas import ArtifactOut, EventList, EventOut
from app.search_schemas import SearchCreate, SearchList, SearchOut, SearchSummaryOut
from app.services import searches as search_service
from app.services.streams import open_search_stream
from app.storage import get_store

router = APIRouter(prefix="/v1/searches", tags=["searches"])


def get_tenant_search(db: SessionDep, tenant: TenantDep, search_id: Annotated[str, Path(max_length=64)]) -> Search:
    return search_service.get_search(db=db, tenant=tenant, search_id=search_id)


SearchDep = Annotated[Search, Depends(get_tenant_search)]


@router.post("", status_code=201, response_model=SearchOut, responses={
    200: {"model": SearchOut, "description": "Replay of an earlier request with the same Idempotency-Key"},
    **problems(401, 422, 503)})
def create_search(body: SearchCreate, db: SessionDep, tenant: TenantDep, settings: SettingsDep, response: Response,
                  idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> SearchOut:
    """Submit a goal: Optuna samples the space over the base spec, each trial a child job."""
    search, created = search_service.submit_search(db=db, tenant=tenant, request=body, settings=settings,
                                                   idempotency_key=idempotency_key)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/searches/{search.id}"
    return SearchOut.from_search(search)


@router.get("", response_model=SearchList, responses=problems(401, 422))
def list_searches(db: SessionDep, tenant: TenantDep, status: JobStatus | None = None,
                  limit: Annotated[int, Query(ge=1, le=100)] = 20,
                  after: Annotated[str | None, Query(max_length=64)] = None) -> SearchList:
    """List the caller's searches, newest first; page with ``after`` = the last id seen."""
    rows, has_more = search_service.list_searches(db=db, tenant=tenant, status=status, limit=limit, after=after)
    return SearchList(data=[SearchSummaryOut.model_validate(s) for s in rows], has_more=has_more)


@router.get("/{search_id}", response_model=SearchOut, responses=problems(401, 404))
def get_search(search: SearchDep) -> SearchOut:
    """Return the search: status, trials (child job, params, values, state), the front, the best."""
    return SearchOut.from_search(search)


@router.post("/{search_id}/cancel", response_model=SearchOut, responses=problems(401, 404, 409))
def cancel_search(search: SearchDep, db: SessionDep) -> SearchOut:
    """Cancel the search; its controller cancels the running child jobs and starts no more."""
    return SearchOut.from_search(search_service.request_cancel(db=db, search=search))


@router.get("/{search_id}/events", response_model=EventList, responses=problems(401, 404, 422))
def list_search_events(search: SearchDep, db: SessionDep, after: EventCursor = 0,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> EventList:
    """Return the search's events (trial started/complete/pruned..., the end) after ``after``."""
    rows, has_more = search_service.list_events(db=db, search_id=search.id, after=after, limit=limit)
    return EventList(data=[EventOut.model_validate(e) for e in rows], has_more=has_more)


@router.get("/{search_id}/events/stream", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "One SSE message per event: id = seq, event = kind"},
    **problems(401, 404, 422),
    429: {**problems(429)[429], "description": "Rate limit, or the tenant's open-stream cap, job and search streams "
                                               "together (DISTILLERY_MAX_STREAMS_PER_TENANT); see Retry-After"}})
async def stream_search_events(
    tenant: TenantDep, db: SessionDep, settings: SettingsDep, search_id: Annotated[str, Path(max_length=64)],
    after: EventCursor = 0,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """Follow the search's events live (a reconnect with Last-Event-ID resumes); it ends after the final event."""
    release_session(db)  # as the job stream: no pooled connection held for the stream's life
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
    stream = await open_search_stream(url=settings.resolved_database_url, tenant=tenant, search_id=search_id,
                                      after=start, cap=settings.max_streams_per_tenant)
    return EventStreamResponse(stream)


@router.get("/{search_id}/artifacts", response_model=list[ArtifactOut], responses=problems(401, 404))
def list_search_artifacts(search: SearchDep, db: SessionDep) -> list[ArtifactOut]:
    """List search.json, pareto.csv and pareto.png once the search has ended."""
    return [ArtifactOut.model_validate(a) for a in search_service.list_artifacts(db=db, search=search)]


@router.get("/{search_id}/artifacts/{name}", response_class=FileResponse, responses={
    200: {"content": {"application/octet-stream": {}}, "description": "The file"},
    206: {"description": "Partial content (Range)"}, **problems(401, 404, 416)})
def download_search_artifact(search: SearchDep, name: Annotated[str, Path(max_length=200)], request: Request,
                             db: SessionDep, settings: SettingsDep) -> Response:
    """Download one of the search's artifacts (the chosen student is downloaded through its job)."""
    artifact = search_service.get_artifact(db=db, search=search, name=name)
    store = get_store(settings)
    path = store.local_path(artifact.path)
    if path is not None:
        return FileResponse(path, media_type=artifact.media_type, filename=artifact.name,
                            headers={"ETag": f'"{artifact.sha256}"'})
    return ranged_response(request=request, artifact=artifact, store=store)  # type: ignore[arg-type]
