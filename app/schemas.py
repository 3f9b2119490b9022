"""HTTP models. A job's body is ``JobSpec`` itself (imported, never copied)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.files.checks import FilePurpose
from app.job_status import JobStatus
from app.training import JobSpec

JobCreate = JobSpec


class JobError(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: JobStatus
    progress: float = Field(description="fraction of all training epochs done, 0..1")
    stage: str | None = Field(description="stage now training, e.g. 'teacher:digit-teacher', 'student'")
    metrics: dict[str, Any] | None = Field(description="latest epoch: stage, epoch, per-task metrics, losses")
    attempt: int
    cancel_requested: bool
    error: JobError | None
    spec: dict[str, Any] = Field(description="the stored spec, every default filled in")
    spec_sha256: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_job(cls, job: Any) -> "JobOut":
        error = JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
        return cls.model_validate({**{k: getattr(job, k) for k in cls.model_fields if k != "error"}, "error": error})


class JobList(BaseModel):
    data: list[JobOut]
    has_more: bool


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    kind: str
    data: dict[str, Any]
    created_at: datetime


class EventList(BaseModel):
    data: list[EventOut]
    has_more: bool


class ArtifactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    size: int
    sha256: str
    media_type: str


class Problem(BaseModel):
    """RFC 9457 problem details, as every error of this API is returned."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str
    errors: list[dict[str, Any]] | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=200, description="tenant name; created if new")
    name: str = Field(default="default", min_length=1, max_length=200, description="a label for the key")
    admin: bool = Field(default=False, description="may manage keys")


class KeyOut(BaseModel):
    id: str
    tenant: str
    name: str
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_key(cls, key: Any) -> "KeyOut":
        return cls(id=key.id, tenant=key.tenant.name, name=key.name, prefix=key.prefix, admin=key.is_admin,
                   created_at=key.created_at, revoked_at=key.revoked_at)


class KeyCreated(KeyOut):
    key: str = Field(description="the API key itself; shown only in this response")


class FileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    purpose: FilePurpose
    filename: str
    size: int
    sha256: str
    meta: dict[str, Any] = Field(description="what the content check found: format, arrays/columns/tensors")
    created_at: datetime


class FileList(BaseModel):
    data: list[FileOut]


class ValidationSummary(BaseModel):
    valid: Literal[True] = True
    spec: dict[str, Any] = Field(description="the spec with every default filled in, as it would be stored")
    spec_sha256: str
    summary: dict[str, Any] = Field(description="params per model, compression ratio, stages with steps per "
                                                "epoch, estimated teacher-cache bytes, dataset notes")
    warnings: list[str] = Field(default_factory=list,
                                description="what would keep the job from running now (e.g. no worker "
                                            "with resources.devices devices)")
