"""Job artifacts: storing what a worker produced, listing and locating them for download."""

import mimetypes
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, NotFound
from app.models import Artifact, Job
from app.storage import ArtifactStore, StoredObject, get_store

MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
    ".csv": "text/csv",
    ".png": "image/png",
    ".html": "text/html",
}


def media_type_of(name: str) -> str:
    suffix = Path(name).suffix
    return MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def store_outputs(*, job_id: str, files: list[Path], settings: Settings) -> list[tuple[str, StoredObject, str]]:
    """Copy a finished run's files into the artifact store; return (name, stored, media type)."""
    store = get_store(settings)
    return [(f.name, store.save(job_id=job_id, name=f.name, source=f), media_type_of(f.name)) for f in files]


def results_of(*, job: Job) -> dict[str, Any]:
    if job.results is None:
        raise Conflict(f"job {job.id} has no results (status {job.status})")
    return job.results


def list_artifacts(*, db: Session, job_id: str) -> list[Artifact]:
    return list(db.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def locate(*, db: Session, job_id: str, name: str,
           settings: Settings) -> tuple[Artifact, ArtifactStore, Path | None]:
    """Return the artifact row, the store that holds it and its file on this host (None: read it from the
    store by ranges); 404 if the job has no such artifact, or its file is missing from a local store."""
    artifact = db.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if artifact is None:
        raise NotFound(f"job {job_id} has no artifact {name!r}")
    store = get_store(settings)
    try:
        return artifact, store, store.local_path(artifact.path)
    except FileNotFoundError as exc:
        raise NotFound(f"artifact {name!r} is listed but missing from the store") from exc
