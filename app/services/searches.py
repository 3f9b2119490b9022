"""Searches on behalf of a tenant: submit (checked like a job), list, get, cancel, events."""

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, InvalidRequest, NotFound
from app.files.refs import check_file_refs
from app.job_status import TERMINAL_STATUSES, JobStatus
from app.models import Search, SearchArtifact, SearchEvent, Tenant
from app.search_schemas import SearchCreate
from app.services import jobs as job_service
from app.services import validator
from app.services.pages import newest_first
from app.services.searches_space import check_space


def add_search_event(*, db: Session, search_id: str, kind: str, data: dict[str, Any] | None = None) -> SearchEvent:
    """Append an event; the sequence comes from an atomic UPDATE ... RETURNING on the search row."""
    seq = db.execute(
        update(Search).where(Search.id == search_id).values(event_seq=Search.event_seq + 1).returning(Search.event_seq),
        execution_options={"synchronize_session": False},
    ).scalar_one()
    event = SearchEvent(search_id=search_id, seq=seq, kind=kind, data=data or {})
    db.add(event)
    return event


def submit_search(*, db: Session, tenant: Tenant, request: SearchCreate, settings: Settings) -> Search:
    """Check the base spec as a job submit does and the space against it, then store the search.

    A worker's search controller picks it up (it asks Optuna for trials and starts child jobs).
    """
    check_space(request)
    stored = request.base.model_dump(mode="json")
    try:  # the same checks as POST /v1/jobs, on the base: its fields are under body.base here
        job_service._refuse_code_teachers(request.base, settings)
        check_file_refs(db=db, tenant=tenant, spec=stored)
        validator.dry_run(stored, tenant_id=tenant.id, settings=settings)
    except InvalidRequest as exc:
        for error in exc.errors or []:
            if str(error.get("field", "")).startswith("body."):
                error["field"] = "body.base." + error["field"][len("body."):]
        raise
    search = Search(tenant_id=tenant.id, name=request.name, request=request.model_dump(mode="json"),
                    status=JobStatus.QUEUED)
    db.add(search)
    db.flush()
    add_search_event(db=db, search_id=search.id, kind="queued", data={"trials": request.trials,
                                                                     "sampler": request.sampler})
    db.commit()
    return search


def get_search(*, db: Session, tenant: Tenant, search_id: str) -> Search:
    """Return the tenant's search or raise NotFound (another tenant's is not found either)."""
    search = db.scalar(select(Search).where(Search.id == search_id, Search.tenant_id == tenant.id))
    if search is None:
        raise NotFound(f"search {search_id} not found")
    return search


def list_searches(*, db: Session, tenant: Tenant, status: str | None, limit: int,
                  after: str | None) -> tuple[list[Search], bool]:
    """Return the tenant's searches, newest first, after the cursor search ``after``."""
    query = select(Search).where(Search.tenant_id == tenant.id)
    if status is not None:
        query = query.where(Search.status == status)
    return newest_first(db=db, model=Search, query=query, tenant_id=tenant.id, after=after, limit=limit,
                        noun="search")


def request_cancel(*, db: Session, search: Search) -> Search:
    """Ask the controller to cancel the search: it cancels the running children, starts no more."""
    if search.status in TERMINAL_STATUSES:
        raise Conflict(f"search {search.id} is already {search.status}")
    db.execute(update(Search).where(Search.id == search.id).values(cancel_requested=True),
               execution_options={"synchronize_session": False})
    add_search_event(db=db, search_id=search.id, kind="cancel_requested", data={})
    db.commit()
    db.refresh(search)
    return search


def list_events(*, db: Session, search_id: str, after: int, limit: int) -> tuple[list[SearchEvent], bool]:
    rows = list(db.scalars(select(SearchEvent).where(SearchEvent.search_id == search_id, SearchEvent.seq > after)
                           .order_by(SearchEvent.seq).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def get_artifact(*, db: Session, search: Search, name: str) -> SearchArtifact:
    artifact = db.scalar(select(SearchArtifact).where(SearchArtifact.search_id == search.id,
                                                      SearchArtifact.name == name))
    if artifact is None:
        raise NotFound(f"search {search.id} has no artifact {name!r}")
    return artifact


def list_artifacts(*, db: Session, search: Search) -> list[SearchArtifact]:
    return list(db.scalars(select(SearchArtifact).where(SearchArtifact.search_id == search.id)
                           .order_by(SearchArtifact.name)))
