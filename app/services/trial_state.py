"""A finalise job's input: its light trial's trial-state.pt, fetched from the artifact store."""

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope
from app.errors import InvalidRequest
from app.models import Artifact, Job
from app.storage import get_store
from app.training.errors import TrainingError
from app.training.spec_trial import TRIAL_STATE_NAME


def _state_of(db: Session, tenant_id: str, job_id: str) -> Artifact | None:
    """Return the trial-state.pt artifact of the tenant's own job `job_id` (None: no such state)."""
    return db.scalar(select(Artifact).join(Job, Job.id == Artifact.job_id).where(
        Job.id == job_id, Job.tenant_id == tenant_id, Artifact.name == TRIAL_STATE_NAME))


def check_trial_source(*, db: Session, tenant_id: str, spec: dict[str, Any]) -> None:
    """422 at submit or validate for a `trial.mode: finalise` spec whose `from_job` is not one of the
    tenant's finished light trials (another tenant's job reads as missing, as in the worker)."""
    trial = spec.get("trial") or {}
    if trial.get("mode") == "finalise" and _state_of(db, tenant_id, trial["from_job"]) is None:
        message = (f"job {trial['from_job']} is not one of your finished light trials (no "
                   f"{TRIAL_STATE_NAME})")
        raise InvalidRequest(f"body.trial.from_job: {message}", errors=[
            {"field": "body.trial.from_job", "type": "trial_state_missing", "message": message}])


def fetch_trial_state(*, settings: Settings, tenant_id: str, spec: dict[str, Any], workdir: Path) -> Path | None:
    """Return a local copy of the state a `trial.mode: finalise` spec loads (None for other specs).

    Only the tenant's own job is read; a missing one fails the job with trial_state_missing.
    """
    trial = spec.get("trial") or {}
    if trial.get("mode") != "finalise":
        return None
    with session_scope(settings.resolved_database_url) as db:
        artifact = _state_of(db, tenant_id, trial["from_job"])
    if artifact is None:
        raise TrainingError(code="trial_state_missing", message=f"trial.from_job: job {trial['from_job']} has no "
                                                                f"{TRIAL_STATE_NAME} (not a finished light trial)")
    store = get_store(settings)
    try:
        local = store.local_path(artifact.path)
    except FileNotFoundError as exc:
        raise TrainingError(code="trial_state_missing", message=f"trial.from_job: the {TRIAL_STATE_NAME} of job "
                                                                f"{trial['from_job']} is gone from the store") from exc
    if local is not None:
        return local
    target = workdir / "inputs" / TRIAL_STATE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as handle:
        for chunk in store.read_range(artifact.path, 0, artifact.size - 1):
            handle.write(chunk)
    return target
