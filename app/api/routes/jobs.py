"""Job routes: submit, list, get, cancel, events."""

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from app.api.deps import EventCursor, JobDep, SessionDep, SettingsDep, TenantDep
from app.api.problems import problems
from app.schemas import EventList, EventOut, JobCreate, JobList, JobOut, JobStatus, ValidationSummary
from app.services import events as event_service
from app.services import jobs as job_service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=201, response_model=JobOut, responses={
    200: {"model": JobOut, "description": "Replay of an earlier request with the same Idempotency-Key"},
    **problems(401, 409, 422, 429, 503)})
def create_job(
    spec: JobCreate, db: SessionDep, tenant: TenantDep, settings: SettingsDep, response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Submit a distillation job; it is queued for a worker."""
    job, created = job_service.submit_job(db=db, tenant=tenant, spec=spec, idempotency_key=idempotency_key,
                                          settings=settings)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.from_job(job)


@router.post("/validate", response_model=ValidationSummary, responses=problems(401, 422))
async def validate_job(spec: JobCreate, db: SessionDep, tenant: TenantDep, settings: SettingsDep) -> ValidationSummary:
    """Dry-run a spec without queueing it: files, cross-references, one batch through every model."""
    return await job_service.validate_job(db=db, tenant=tenant, spec=spec, settings=settings)


@router.get("", response_model=JobList, responses=problems(401, 422))
def list_jobs(
    db: SessionDep, tenant: TenantDep, status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20, after: Annotated[str | None, Query(max_length=64)] = None,
) -> JobList:
    """List the caller's jobs, newest first; page with ``after`` = the last id seen."""
    rows, has_more = job_service.list_jobs(db=db, tenant=tenant, status=status, limit=limit, after=after)
    return JobList(data=[JobOut.from_job(j) for j in rows], has_more=has_more)


@router.get("/{job_id}", response_model=JobOut, responses=problems(401, 404))
async def get_job(job: JobDep) -> JobOut:
    """Return a job's status, progress, latest metrics and error."""
    # async: the row is loaded by JobDep, the rest is CPU; a sync def would cost two threadpool hops
    # (the call and FastAPI's response validation).
    return JobOut.from_job(job)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=problems(401, 404, 409))
def cancel_job(job: JobDep, db: SessionDep) -> JobOut:
    """Cancel a job: a queued one at once, a running one within seconds."""
    return JobOut.from_job(job_service.request_cancel(db=db, job=job))


@router.delete("/{job_id}", status_code=204, responses=problems(401, 404, 409))
def delete_job(job: JobDep, db: SessionDep, settings: SettingsDep) -> Response:
    """Delete an ended job, its events and its artifacts (frees storage quota)."""
    job_service.delete_job(db=db, job=job, settings=settings)
    return Response(status_code=204)


@router.get("/{job_id}/events", response_model=EventList, responses=problems(401, 404, 422))
def list_job_events(
    job: JobDep, db: SessionDep, after: EventCursor = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventList:
    """Return the job's events with a sequence number above ``after``."""
    rows, has_more = event_service.list_events(db=db, job_id=job.id, after=after, limit=limit)
    return EventList(data=[EventOut.model_validate(e) for e in rows], has_more=has_more)
