"""Searches on behalf of a tenant: submit (checked like a job), list, get, cancel, events."""

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    TooManyActiveJobs,
)
from app.files.refs import check_file_refs
from app.job_status import TERMINAL_STATUSES, JobStatus
from app.models import Search, SearchArtifact, SearchEvent, Tenant
from app.search_schemas import SearchCreate
from app.services import jobs as job_service
from app.services import validator
from app.services.events import next_event_seq
from app.services.pages import newest_first
from app.services.searches_space import check_space


def add_search_event(*, db: Session, search_id: str, kind: str, data: dict[str, Any] | None = None) -> SearchEvent:
    """Append an event to the search; its number comes from ``next_event_seq`` on the search row."""
    event = SearchEvent(search_id=search_id, seq=next_event_seq(db=db, model=Search, row_id=search_id), kind=kind,
                        data=data or {})
    db.add(event)
    return event


def submit_search(*, db: Session, tenant: Tenant, request: SearchCreate, settings: Settings,
                  idempotency_key: str | None = None) -> tuple[Search, bool]:
    """Check the base spec as a job submit does and the space against it, store the search; return it and
    whether it is new.

    With an ``idempotency_key``, a repeat of the same body returns the first search without any check,
    and another body under the same key is refused (422), as for jobs. A worker's search controller picks
    the search up (it asks Optuna for trials and starts child jobs).
    """
    stored = request.model_dump(mode="json")
    existing = _by_idempotency_key(db=db, tenant=tenant, key=idempotency_key)
    if existing is not None:
        return _same_request_or_refused(existing, stored), False
    check_space(request)
    base = request.base.model_dump(mode="json")
    try:  # the same checks as POST /v1/jobs, on the base: its fields are under body.base here
        job_service._refuse_code_teachers(request.base, settings)
        check_file_refs(db=db, tenant=tenant, spec=base)
        validator.dry_run(base, tenant_id=tenant.id, settings=settings)
    except InvalidRequest as exc:
        for error in exc.errors or []:
            if str(error.get("field", "")).startswith("body."):
                error["field"] = "body.base." + error["field"][len("body."):]
        raise
    search = Search(tenant_id=tenant.id, name=request.name, request=stored, idempotency_key=idempotency_key,
                    status=JobStatus.QUEUED)
    db.add(search)
    try:
        db.flush()
    except IntegrityError:  # a concurrent request with the same key stored its search first
        db.rollback()
        existing = _by_idempotency_key(db=db, tenant=tenant, key=idempotency_key)
        if existing is None:
            raise
        return _same_request_or_refused(existing, stored), False
    add_search_event(db=db, search_id=search.id, kind="queued", data={"trials": request.trials,
                                                                     "sampler": request.sampler})
    db.commit()
    return search, True


def _by_idempotency_key(*, db: Session, tenant: Tenant, key: str | None) -> Search | None:
    if key is None:
        return None
    return db.scalar(select(Search).where(Search.tenant_id == tenant.id, Search.idempotency_key == key))


def _same_request_or_refused(existing: Search, stored: dict[str, Any]) -> Search:
    # Both sides have every default filled in, so equal goals compare equal however they were written.
    if existing.request != stored:
        raise InvalidRequest(
            "Idempotency-Key was already used with a different request body",
            errors=[{"field": "header.Idempotency-Key", "message": "reused with a different body",
                     "type": "idempotency_key_reused"}],
        )
    return existing


def quota_wait(*, db: Session, search: Search, tenant: Tenant, settings: Settings) -> bool:
    """Return whether the tenant's quotas keep the search from starting a trial now; record each wait once.

    A trial is a job like any other: it starts only under the tenant's active-job cap and storage quota,
    checked as POST /v1/jobs checks them. The search waits instead of failing: its own running trials
    end and free the job cap, and deleting ended jobs frees storage. The ``waiting_for_quota`` event says
    which quota and how to make room; it is written when a wait begins, not at every step.
    """
    try:
        job_service._enforce_caps(db=db, tenant=tenant, limits=settings)
        return False
    except (TooManyActiveJobs, QuotaExceeded) as exc:
        last = db.scalar(select(SearchEvent).where(SearchEvent.search_id == search.id)
                         .order_by(SearchEvent.seq.desc()).limit(1))
        if last is None or last.kind != "waiting_for_quota" or last.data.get("code") != exc.code:
            add_search_event(db=db, search_id=search.id, kind="waiting_for_quota",
                             data={"code": exc.code, "message": exc.detail})
            db.commit()  # before Optuna writes again: its own SQLite connection would wait on this one
        return True


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
