"""Results and artifact downloads (Range, If-Range, HEAD; ETag = sha256)."""

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from app.api.deps import JobDep, SessionDep, SettingsDep
from app.api.problems import problems
from app.api.ranges import ranged_response
from app.result_schemas import JobResults
from app.schemas import ArtifactOut
from app.services import artifacts as artifact_service

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["artifacts"])


@router.get("/results", response_model=JobResults, response_model_exclude_unset=True,
            responses=problems(401, 404, 409))
def get_results(job: JobDep) -> dict[str, Any]:
    """Return results.json: per task, teacher vs student vs baseline; sizes and timings."""
    return artifact_service.results_of(job=job)


@router.get("/artifacts", response_model=list[ArtifactOut], responses=problems(401, 404))
def list_artifacts(job: JobDep, db: SessionDep) -> list[ArtifactOut]:
    """List the job's artifacts with size, sha256 and media type."""
    return [ArtifactOut.model_validate(a) for a in artifact_service.list_artifacts(db=db, job_id=job.id)]


_DOWNLOAD_RESPONSES = {
    200: {"content": {"application/octet-stream": {}}, "description": "The file"},
    206: {"description": "Partial content (Range)"}, **problems(401, 404, 416),
}


@router.get("/artifacts/{name}", response_class=FileResponse, responses=_DOWNLOAD_RESPONSES,
            operation_id="artifacts-download_artifact")
@router.head("/artifacts/{name}", response_class=FileResponse, responses=_DOWNLOAD_RESPONSES,
             operation_id="artifacts-head_artifact")
def download_artifact(job: JobDep, name: str, request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    """Download one artifact; supports Range / If-Range, with ETag = its sha256."""
    artifact, store, path = artifact_service.locate(db=db, job_id=job.id, name=name, settings=settings)
    if path is not None:
        return FileResponse(path, media_type=artifact.media_type, filename=artifact.name,
                            headers={"ETag": f'"{artifact.sha256}"', "Cache-Control": "private, max-age=0"})
    return ranged_response(request=request, artifact=artifact, store=store)
