"""Job creation, listing, lookup and cancellation on behalf of a tenant."""

import logging

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import utcnow
from app.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    ServiceUnavailable,
    TooManyActiveJobs,
)
from app.files.refs import check_file_refs
from app.job_status import ACTIVE_STATUSES, TERMINAL_STATUSES, JobStatus
from app.models import Artifact, File, Job, Tenant
from app.queue import enqueue
from app.schemas import ValidationSummary
from app.services import validator
from app.services.events import add_event
from app.services.pages import newest_first
from app.services.placement import placement_warnings
from app.services.trial_state import check_trial_source
from app.storage import get_store
from app.training import JobSpec, spec_sha256

log = logging.getLogger("distillery.jobs")


def insert_job(*, db: Session, tenant: Tenant, spec: JobSpec, idempotency_key: str | None) -> tuple[Job, bool]:
    """Store a queued job (defaults filled in) with its first event and commit; return it and whether it is new.

    No checks (``submit_job`` makes them first). When a concurrent request with the same
    ``idempotency_key`` stored its job first, that job is returned instead (or refused: another body).
    """
    stored, digest = spec.model_dump(mode="json"), spec_sha256(spec)
    job = Job(tenant_id=tenant.id, name=spec.name, spec=stored, spec_sha256=digest,
              idempotency_key=idempotency_key, status=JobStatus.QUEUED, enqueued_at=utcnow())
    db.add(job)
    try:
        db.flush()
    except IntegrityError:  # a concurrent request with the same key won the race
        db.rollback()
        existing = _find_by_idempotency_key(db=db, tenant=tenant, key=idempotency_key or "")
        if existing is None:
            raise
        return _same_request_or_conflict(existing, digest), False
    add_event(db=db, job_id=job.id, kind="queued", data={"spec_sha256": digest})
    db.commit()
    return job, True


def tenant_usage(*, db: Session, tenant: Tenant) -> tuple[int, int]:
    """Return (active jobs, bytes kept in artifacts and uploaded files) for the tenant."""
    active = db.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant.id, Job.status.in_(ACTIVE_STATUSES)))
    artifacts = db.scalar(select(func.coalesce(func.sum(Artifact.size), 0)).join(Job).where(Job.tenant_id == tenant.id))
    uploads = db.scalar(select(func.coalesce(func.sum(File.size), 0)).where(File.tenant_id == tenant.id))
    return int(active or 0), int(artifacts or 0) + int(uploads or 0)


def _enforce_caps(*, db: Session, tenant: Tenant, limits: Settings) -> None:
    active, stored = tenant_usage(db=db, tenant=tenant)
    max_active = tenant.max_active_jobs or limits.max_active_jobs_per_tenant
    if active >= max_active:
        raise TooManyActiveJobs(f"{active} jobs are queued or running, the cap for this tenant is {max_active}; "
                                "wait for one to finish or cancel one", headers={"Retry-After": "30"})
    max_bytes = tenant.max_storage_bytes if tenant.max_storage_bytes is not None else limits.max_storage_bytes_per_tenant
    if stored >= max_bytes:
        raise QuotaExceeded(f"artifacts use {stored} bytes, the quota for this tenant is {max_bytes}; "
                            "delete finished jobs (DELETE /v1/jobs/{id}) to make room")


def delete_job(*, db: Session, job: Job, settings: Settings) -> None:
    """Delete an ended job with its events and artifacts (files too)."""
    if job.status not in TERMINAL_STATUSES:
        raise Conflict(f"job {job.id} is {job.status}; cancel it first")
    db.delete(job)
    db.commit()
    get_store(settings).delete_job(job.id)


def _find_by_idempotency_key(*, db: Session, tenant: Tenant, key: str) -> Job | None:
    return db.scalar(select(Job).where(Job.tenant_id == tenant.id, Job.idempotency_key == key))


def _same_request_or_conflict(existing: Job, digest: str) -> Job:
    if existing.spec_sha256 != digest:
        raise InvalidRequest(
            "Idempotency-Key was already used with a different request body",
            errors=[{"field": "header.Idempotency-Key", "message": "reused with a different body",
                     "type": "idempotency_key_reused"}],
        )
    return existing


# Built once, as the key lookup is: clients poll their jobs, and building + cache-keying a fresh select
# per request showed as ~6 % of a status request's CPU (py-spy, 50 clients).
_TENANT_JOB = select(Job).where(Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id"))


def get_job(*, db: Session, tenant: Tenant, job_id: str) -> Job:
    """Return the tenant's job or raise NotFound (another tenant's job is not found either)."""
    job = db.scalar(_TENANT_JOB, {"job_id": job_id, "tenant_id": tenant.id})
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(*, db: Session, tenant: Tenant, status: str | None, limit: int, after: str | None) -> tuple[list[Job], bool]:
    """Return the tenant's jobs, newest first, after the cursor job ``after``."""
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status is not None:
        query = query.where(Job.status == status)
    return newest_first(db=db, model=Job, query=query, tenant_id=tenant.id, after=after, limit=limit,
                        noun="job")


def request_cancel(*, db: Session, job: Job) -> Job:
    """Cancel a queued job at once; ask a running one to stop (the worker ends it within seconds)."""
    if job.status in TERMINAL_STATUSES:
        raise Conflict(f"job {job.id} is already {job.status}")
    now = utcnow()
    cancelled_now = db.execute(
        update(Job).where(Job.id == job.id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now),
        execution_options={"synchronize_session": False},
    ).rowcount
    if cancelled_now:
        add_event(db=db, job_id=job.id, kind="cancelled", data={"while": JobStatus.QUEUED})
    else:
        db.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING).values(cancel_requested=True),
                   execution_options={"synchronize_session": False})
        add_event(db=db, job_id=job.id, kind="cancel_requested", data={})
    db.commit()
    db.refresh(job)
    return job


def _refuse_code_teachers(spec: JobSpec, settings: Settings) -> None:
    """A TorchScript teacher runs its own code in the validator and the worker: only where the server
    allows it. Raise the 422 for a spec that names one on a server that does not."""
    if settings.allow_torchscript:
        return
    fields = [f"body.teachers[{i}].source.torchscript" for i, t in enumerate(spec.teachers)
              if t.source.torchscript is not None]
    if fields:
        message = ("TorchScript teachers run the code inside the file, so this server refuses them; "
                   "its operator can enable them with DISTILLERY_ALLOW_TORCHSCRIPT=true")
        raise InvalidRequest(message, errors=[{"field": f, "message": message, "type": "torchscript_disabled"}
                                              for f in fields])


def _refuse_untracked_mlflow(spec: JobSpec, settings: Settings) -> None:
    """A spec asking for MLflow on a server with no tracking URI would fail only once a worker ran it;
    refuse it at submit and validate instead (the API and the workers share the setting)."""
    if spec.tracking is not None and spec.tracking.mlflow is not None and not settings.mlflow_tracking_uri:
        message = ("this server has no MLflow tracking server (DISTILLERY_MLFLOW_TRACKING_URI is unset); "
                   "leave tracking.mlflow out, or ask the operator to set one")
        raise InvalidRequest(message, errors=[{"field": "body.tracking.mlflow", "message": message,
                                               "type": "mlflow_not_configured"}])


def submit_job(*, db: Session, tenant: Tenant, spec: JobSpec, idempotency_key: str | None, settings: Settings) -> tuple[Job, bool]:
    """Check and dry-run the spec, store the job, then hand it to the broker; return it and whether it is new.

    With an ``idempotency_key``, a repeat of the same body returns the first job without any check
    (a different body under the same key is refused). A spec the checks or the dry run refuse is a
    422 and stores nothing. A replay of a still-queued job sends its message again: a lost message
    is recovered that way, and a duplicate is harmless because a worker must claim the job first.
    """
    stored = spec.model_dump(mode="json")
    job = _replayed(db=db, tenant=tenant, key=idempotency_key, digest=spec_sha256(spec))
    created = job is None
    if job is None:
        # First: "the server refuses TorchScript" is the error to act on, before any file check.
        _refuse_code_teachers(spec, settings)
        _refuse_untracked_mlflow(spec, settings)
        check_file_refs(db=db, tenant=tenant, spec=stored)
        check_trial_source(db=db, tenant_id=tenant.id, spec=stored)
        _enforce_caps(db=db, tenant=tenant, limits=settings)
        # In the validator process: the API process stays free of torch.
        validator.dry_run(stored, tenant_id=tenant.id, settings=settings)
        job, created = insert_job(db=db, tenant=tenant, spec=spec, idempotency_key=idempotency_key)
    if job.status == JobStatus.QUEUED:
        _enqueue_or_503(job, settings=settings)
    return job, created


def _replayed(*, db: Session, tenant: Tenant, key: str | None, digest: str) -> Job | None:
    """Return the job an earlier request with this Idempotency-Key created, if any (422 for another body)."""
    existing = _find_by_idempotency_key(db=db, tenant=tenant, key=key) if key is not None else None
    return _same_request_or_conflict(existing, digest) if existing is not None else None


def _enqueue_or_503(job: Job, *, settings: Settings) -> None:
    try:
        enqueue(job.id, settings=settings)
    except Exception as exc:  # the job is stored; a retry with the same Idempotency-Key re-sends it
        log.exception("could not enqueue job %s", job.id)
        raise ServiceUnavailable(
            f"job {job.id} is stored but the broker is unreachable ({type(exc).__name__}); "
            "retry with the same Idempotency-Key", headers={"Retry-After": "5"},
        ) from exc


async def validate_job(*, db: Session, tenant: Tenant, spec: JobSpec, settings: Settings) -> ValidationSummary:
    """Check the spec's files, then dry-run it in the validator process (the same checks as a submit)."""
    stored = spec.model_dump(mode="json")
    _refuse_code_teachers(spec, settings)
    _refuse_untracked_mlflow(spec, settings)
    check_file_refs(db=db, tenant=tenant, spec=stored)
    check_trial_source(db=db, tenant_id=tenant.id, spec=stored)
    summary = await validator.dry_run_async(stored, tenant_id=tenant.id, settings=settings)
    return ValidationSummary(spec=stored, spec_sha256=spec_sha256(spec), summary=summary,
                             warnings=placement_warnings(spec, settings, db=db))
