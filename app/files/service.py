"""Uploaded files: accept (stream, hash, check content), list, get, delete."""

import json
import os
from collections.abc import AsyncIterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, NotFound, QuotaExceeded
from app.files.checks import CODE_PURPOSES, PURPOSES, check_content
from app.files.uploads import BadUpload, receive_upload
from app.job_status import ACTIVE_STATUSES
from app.models import File, Job, Tenant
from app.services.jobs import tenant_usage


async def accept_upload(*, db: Session, tenant: Tenant, content_type: str, chunks: AsyncIterator[bytes],
                        settings: Settings) -> File:
    """Stream the upload to disk, check it for its purpose, then keep it under the tenant."""
    _active, used = tenant_usage(db=db, tenant=tenant)
    quota = tenant.max_storage_bytes if tenant.max_storage_bytes is not None else settings.max_storage_bytes_per_tenant
    limit = min(settings.max_upload_bytes, max(0, quota - used))
    if limit == 0:
        raise QuotaExceeded(f"stored files and artifacts use {used} bytes, the quota is {quota}")
    received = await receive_upload(content_type=content_type, chunks=chunks,
                                    tmp_dir=settings.files_dir / ".incoming", max_bytes=limit)
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
        target = settings.files_dir / tenant.id / row.id
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(received.path, target)  # same filesystem: an atomic rename, no copy
        db.commit()
        return row
    finally:
        received.path.unlink(missing_ok=True)


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
    db.delete(row)
    db.commit()
    (settings.files_dir / row.tenant_id / row.id).unlink(missing_ok=True)
