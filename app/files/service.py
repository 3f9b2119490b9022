"""Uploaded files: accept (stream, hash, check content), list, get, delete."""

import json
import os
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.errors import Conflict, NotFound, QuotaExceeded, ServiceUnavailable
from app.files.checks import CODE_PURPOSES, PURPOSES, check_content
from app.files.objects import (
    UploadCache,
    delete_upload,
    object_key,
    put_upload,
    uploads_in_object_store,
)
from app.files.uploads import BadUpload, ReceivedUpload, receive_upload
from app.job_status import ACTIVE_STATUSES
from app.models import File, Job, Tenant
from app.services.jobs import tenant_usage


def upload_limit(*, db: Session, tenant: Tenant, settings: Settings) -> int:
    """The most bytes the tenant's next upload may have (its quota left, capped by the upload limit)."""
    _active, used = tenant_usage(db=db, tenant=tenant)
    quota = tenant.max_storage_bytes if tenant.max_storage_bytes is not None else settings.max_storage_bytes_per_tenant
    limit = min(settings.max_upload_bytes, max(0, quota - used))
    if limit == 0:
        raise QuotaExceeded(f"stored files and artifacts use {used} bytes, the quota is {quota}")
    return limit


async def receive(*, content_type: str, chunks: AsyncIterator[bytes], limit: int, settings: Settings) -> ReceivedUpload:
    """Stream the upload to a temporary file under the files directory (no database needed meanwhile)."""
    return await receive_upload(content_type=content_type, chunks=chunks,
                                tmp_dir=settings.files_dir / ".incoming", max_bytes=limit)


async def keep_upload(*, db: Session, tenant: Tenant, received: ReceivedUpload, settings: Settings) -> File:
    """Check a received upload for its purpose, then keep it under the tenant (the temporary file goes)."""
    try:
        purpose = received.fields.get("purpose", "")
        if purpose not in PURPOSES:
            raise BadUpload(f"purpose must be one of {', '.join(PURPOSES)}",
                            errors=[{"field": "body.purpose", "message": f"got {purpose!r}", "type": "enum"}])
        if purpose in CODE_PURPOSES and not settings.allow_torchscript:
            raise BadUpload(f"{purpose} files are TorchScript: loading one runs the code inside it, so the server "
                            f"refuses them unless {CODE_PURPOSES[purpose]}=true",
                            errors=[{"field": "body.purpose", "message": f"{purpose} is off on this server",
                                     "type": "torchscript_disabled"}])
        meta = check_content(path=received.path, purpose=purpose, filename=received.filename)
        row = File(tenant_id=tenant.id, purpose=purpose, filename=received.filename, size=received.size,
                   sha256=received.sha256, meta=meta)
        db.add(row)
        db.flush()
        if uploads_in_object_store(settings):
            await _keep_in_object_store(db=db, row=row, source=received.path, settings=settings)
            return row
        target = settings.files_dir / tenant.id / row.id
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(received.path, target)  # same filesystem: an atomic rename, no copy
        db.commit()
        return row
    finally:
        received.path.unlink(missing_ok=True)


async def _keep_in_object_store(*, db: Session, row: File, source: Path, settings: Settings) -> None:
    """Put the checked upload in the object store, commit its record, and keep this host's copy."""
    key = object_key(settings, tenant_id=row.tenant_id, file_id=row.id)
    await run_in_threadpool(put_upload, settings, key=key, source=source, sha256=row.sha256)
    try:
        db.commit()
    except Exception:
        with suppress(ServiceUnavailable):  # logged there; the commit's error is the one to report
            delete_upload(settings, key=key)  # no record, no object
        raise
    UploadCache.for_settings(settings).adopt(source, row.sha256)  # the spec's dry run reads it next


def get_file(*, db: Session, tenant: Tenant, file_id: str) -> File:
    row = db.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant.id))
    if row is None:
        raise NotFound(f"file {file_id} not found")
    return row


def list_files(*, db: Session, tenant: Tenant, purpose: str | None) -> list[File]:
    query = select(File).where(File.tenant_id == tenant.id).order_by(File.created_at.desc())
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    return list(db.scalars(query))


def delete_file(*, db: Session, row: File, settings: Settings) -> None:
    """Delete a file unless a queued or running job refers to it."""
    active = db.scalars(select(Job).where(Job.tenant_id == row.tenant_id, Job.status.in_(ACTIVE_STATUSES)))
    users = [job.id for job in active if row.id in json.dumps(job.spec)]
    if users:
        raise Conflict(f"file {row.id} is used by active job(s) {', '.join(users)}")
    if uploads_in_object_store(settings):
        # The object goes first: a store that fails leaves the record (503, retry), never a record-less object.
        delete_upload(settings, key=object_key(settings, tenant_id=row.tenant_id, file_id=row.id))
    db.delete(row)
    db.commit()
    (settings.files_dir / row.tenant_id / row.id).unlink(missing_ok=True)
    if uploads_in_object_store(settings) and db.scalar(select(File.id).where(File.sha256 == row.sha256).limit(1)) is None:
        UploadCache.for_settings(settings).forget(row.sha256)  # other hosts drop theirs at their next job
