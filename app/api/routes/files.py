"""Uploaded files: datasets, transfer sets and teachers."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from app.api.deps import SessionDep, SettingsDep, TenantDep, session_paused
from app.api.problems import problems
from app.files import service as file_service
from app.files.checks import PURPOSES, FilePurpose
from app.files.uploads import PayloadTooLarge
from app.schemas import FileList, FileOut

router = APIRouter(prefix="/v1/files", tags=["files"])
FileId = Annotated[str, Path(max_length=64)]
MULTIPART_OVERHEAD = 64 * 1024

_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"type": "string", "enum": list(PURPOSES)},
    }}}}}}


@router.post("", status_code=201, response_model=FileOut, openapi_extra=_UPLOAD_BODY,
             responses=problems(400, 401, 409, 413))
async def upload_file(request: Request, db: SessionDep, tenant: TenantDep, settings: SettingsDep) -> FileOut:
    """Upload a file (multipart `file` + `purpose`); it is checked for its purpose before it is kept."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the upload is larger than the limit of {settings.max_upload_bytes} bytes")
    limit = file_service.upload_limit(db=db, tenant=tenant, settings=settings)
    received = None
    try:
        async with session_paused(db):  # a slow body must not hold a pooled connection (nor its permit)
            received = await file_service.receive(content_type=request.headers.get("content-type", ""),
                                                  chunks=request.stream(), limit=limit, settings=settings)
    except BaseException:  # cancelled while waiting for the permit again: the received file goes too
        if received is not None:
            received.path.unlink(missing_ok=True)
        raise
    row = await file_service.keep_upload(db=db, tenant=tenant, received=received, settings=settings)
    return FileOut.model_validate(row)


@router.get("", response_model=FileList, responses=problems(401, 422))
def list_files(db: SessionDep, tenant: TenantDep,
               purpose: FilePurpose | None = Query(default=None)) -> FileList:
    """List the caller's files, newest first."""
    return FileList(data=[FileOut.model_validate(f) for f in file_service.list_files(db=db, tenant=tenant,
                                                                                       purpose=purpose)])


@router.get("/{file_id}", response_model=FileOut, responses=problems(401, 404))
def get_file(file_id: FileId, db: SessionDep, tenant: TenantDep) -> FileOut:
    """Return one file's record."""
    return FileOut.model_validate(file_service.get_file(db=db, tenant=tenant, file_id=file_id))


@router.delete("/{file_id}", status_code=204, responses=problems(401, 404, 409))
def delete_file(file_id: FileId, db: SessionDep, tenant: TenantDep, settings: SettingsDep) -> Response:
    """Delete a file (409 while a queued or running job uses it)."""
    row = file_service.get_file(db=db, tenant=tenant, file_id=file_id)
    file_service.delete_file(db=db, row=row, settings=settings)
    return Response(status_code=204)
