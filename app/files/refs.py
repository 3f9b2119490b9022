"""File references inside a job spec: only the tenant's uploads, of the right purpose, are allowed.

A spec names files as `"file": "<id>"` under a teacher source, the transfer set or the dataset, and
as `"files": ["<id>", ...]` under the dataset (several Parquet files read as one table: each must
be a Parquet upload, all with the same columns and types). Over HTTP a reference must be an
uploaded file's id (never a path on the server); the worker and the validator
turn ids into paths through `file_resolver`: the API's files folder (`TenantFileResolver`), or, with
an object store, this host's verified copies (`app.files.objects`).
"""

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope
from app.errors import InvalidRequest
from app.files.objects import (
    ObjectStoreFileResolver,
    StoredUpload,
    UploadCache,
    object_key,
    uploads_in_object_store,
)
from app.models import File, Tenant
from app.training import TrainingError
from app.training.datasets.parquet_parts import SCHEMA_MISMATCH, schema_difference
from app.training.files import FileResolver
from app.training.hf_config import BUILTIN_BACKBONES

# The key that holds a `"file"` decides what the file must be.
PURPOSE_BY_PARENT = {"weights": "teacher_weights", "onnx": "teacher_onnx", "outputs": "teacher_outputs",
                     "torchscript": "teacher_torchscript",
                     "transfer_set": "transfer_set", "dataset": "dataset"}


def file_refs(spec: dict[str, Any], path: str = "body") -> list[tuple[str, str, str]]:
    """Return (field path, file id, expected purpose) for every file the stored spec names."""
    found: list[tuple[str, str, str]] = []
    if isinstance(spec, dict):
        for key, value in spec.items():
            here = f"{path}.{key}"
            parent = path.rsplit(".", 1)[-1].split("[")[0]
            if key == "file" and isinstance(value, str):
                found.append((here, value, PURPOSE_BY_PARENT.get(parent, "")))
            elif key == "files" and parent == "dataset" and isinstance(value, list):
                found.extend((f"{here}[{index}]", ref, "dataset") for index, ref in enumerate(value)
                             if isinstance(ref, str))
            elif key == "backbone" and isinstance(value, str) and value not in BUILTIN_BACKBONES:
                found.append((here, value, "teacher_hf"))  # a transformer's pretrained encoder: an uploaded zip
            else:
                found.extend(file_refs(value, here))
    elif isinstance(spec, list):
        for index, item in enumerate(spec):
            found.extend(file_refs(item, f"{path}[{index}]"))
    return found


def check_file_refs(*, db: Session, tenant: Tenant, spec: dict[str, Any]) -> None:
    """Raise 422 naming each field whose file is not one of the tenant's uploads of the right purpose."""
    errors = []
    parts: list[tuple[str, File]] = []  # dataset.files: (field, upload), checked together below
    for field, ref, purpose in file_refs(spec):
        row = db.scalar(select(File).where(File.id == ref, File.tenant_id == tenant.id))
        if row is None:
            errors.append({"field": field, "type": "unknown_file",
                           "message": f"{ref!r} is not one of your uploaded files (POST /v1/files, then use its id)"})
        elif purpose and row.purpose != purpose:
            errors.append({"field": field, "type": "wrong_purpose",
                           "message": f"file {ref} was uploaded as {row.purpose!r}; this field needs {purpose!r}"})
        elif field.startswith("body.dataset.files["):
            parts.append((field, row))
    errors.extend(_parquet_part_errors(parts))
    if errors:
        raise InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)


def _parquet_part_errors(parts: list[tuple[str, File]]) -> list[dict[str, str]]:
    """Each of dataset.files must be a Parquet upload with the first one's columns and types."""
    errors, first = [], None
    for field, row in parts:
        meta = row.meta or {}
        if meta.get("format") != "parquet":
            errors.append({"field": field, "type": "not_parquet", "message": (
                f"file {row.id} ({row.filename}) is {meta.get('format') or 'of an unknown format'}, not Parquet; "
                "dataset.files reads Parquet files only (one npz, csv or images upload goes in dataset.file)")})
        elif first is None:
            first = (field, meta["columns"])
        else:
            difference = schema_difference(first[1], meta["columns"])
            if difference:
                errors.append({"field": field, "type": SCHEMA_MISMATCH, "message": (
                    f"file {row.id} ({row.filename}) {difference} (against {first[0]})")})
    return errors


class TenantFileResolver:
    """Map a tenant's file ids to the stored files (the engine's FileResolver protocol)."""

    def __init__(self, *, settings: Settings, tenant_id: str):
        self.root = settings.files_dir / tenant_id

    def resolve(self, ref: str) -> Path:
        path = (self.root / ref).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            raise TrainingError(code="file_not_found", message=f"file {ref!r} is not (or no longer) uploaded")
        return path


def file_resolver(*, settings: Settings, tenant_id: str, spec: dict[str, Any]) -> FileResolver:
    """Return the resolver a job of ``tenant_id`` reads the files of ``spec`` through on this host."""
    if not uploads_in_object_store(settings):
        return TenantFileResolver(settings=settings, tenant_id=tenant_id)
    cache = UploadCache.for_settings(settings)
    ids = {ref for _field, ref, _purpose in file_refs(spec)}
    with session_scope(settings.resolved_database_url) as db:
        rows = db.scalars(select(File).where(File.tenant_id == tenant_id, File.id.in_(ids))) if ids else []
        uploads = {row.id: StoredUpload(key=object_key(settings, tenant_id=tenant_id, file_id=row.id),
                                        sha256=row.sha256, size=row.size) for row in rows}
        prune_upload_cache(db=db, cache=cache)
    return ObjectStoreFileResolver(uploads=uploads, cache=cache)


def prune_upload_cache(*, db: Session, cache: UploadCache) -> list[str]:
    """Remove this host's copies that no upload has any more (deleted files); return their digests.

    Safe while jobs run: a file cannot be deleted while a queued or running job names it.
    """
    held = cache.entries()
    live: set[str] = set()
    for start in range(0, len(held), 500):  # SQLite caps the parameters of one statement
        live.update(db.scalars(select(File.sha256).where(File.sha256.in_(held[start:start + 500]))))
    gone = [digest for digest in held if digest not in live]
    for digest in gone:
        cache.forget(digest)
    return gone
