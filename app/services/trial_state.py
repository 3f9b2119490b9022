"""A finalise job's input: its light trial's trial-state.pt, fetched from the artifact store."""

from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.config import Settings
from app.db import session_scope
from app.models import Artifact, Job
from app.storage import get_store
from app.training.errors import TrainingError
from app.training.spec_trial import TRIAL_STATE_NAME


def fetch_trial_state(*, settings: Settings, tenant_id: str, spec: dict[str, Any], workdir: Path) -> Path | None:
    """Return a local copy of the state a `trial.mode: finalise` spec loads (None for other specs).

    Only the tenant's own job is read; a missing one fails the job with trial_state_missing.
    """
    trial = spec.get("trial") or {}
    if trial.get("mode") != "finalise":
        return None
    with session_scope(settings.resolved_database_url) as db:
        artifact = db.scalar(select(Artifact).join(Job, Job.id == Artifact.job_id).where(
            Job.id == trial["from_job"], Job.tenant_id == tenant_id, Artifact.name == TRIAL_STATE_NAME))
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
