"""results.json as an HTTP model (GET /v1/jobs/{id}/results), field for field as
app/training/results.py writes it, so generated and hand-written clients get types.

Every model keeps keys it does not know (``extra="allow"``) and the route leaves out what a
stored result lacks (``response_model_exclude_unset``): the body is the stored results.json,
whichever engine version wrote it.
"""

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelMetrics(_Open):
    """Every metric of one task, per model (test split); null for a model that was not trained or
    a teacher that does not cover the task."""

    teacher: dict[str, float | None] | None = None
    student: dict[str, float | None] | None = None
    baseline: dict[str, float | None] | None = None


class TaskResult(_Open):
    """One task on the test split: its primary metric for teacher, student and baseline."""

    metric: str = Field(description="the primary metric, e.g. accuracy, auc, rmse")
    higher_is_better: bool
    teacher: float | None = None
    student: float | None = None
    baseline: float | None = None
    all: ModelMetrics | None = Field(default=None, description="every metric of the task, per model")


class ValidationResult(_Open):
    """One task's primary metric on the validation split (what a search may choose by)."""

    teacher: float | None = None
    student: float | None = None
    baseline: float | None = None


class ParamCounts(_Open):
    teacher: int = Field(description="all teachers together (precomputed ones count 0)")
    student: int
    teachers: dict[str, int | None] | None = Field(default=None, description="per teacher; null: precomputed")


class StageResult(_Open):
    name: str = Field(description='"teacher:<name>", "student:trunk", "student" or "baseline"')
    epochs: int
    steps: int
    best_epoch: int | None = None
    stopped_early: bool | None = None
    seconds: float


class Timing(_Open):
    total_seconds: float


class Latency(_Open):
    """CPU microseconds per row (the whole test split per call); teacher = all teachers that run."""

    teacher: float | None = None
    student: float | None = None


class RowCounts(_Open):
    train: int
    validation: int | None = None
    test: int
    labelled: int | None = None
    transfer: int | None = None


class JobResults(_Open):
    """results.json: teacher vs student vs baseline per task, sizes, stages, timings, diagnostics."""

    job_id: str | None = None
    spec_sha256: str
    tasks: dict[str, TaskResult] = Field(description="per task, measured once on the test split")
    validation: dict[str, ValidationResult] | None = None
    params: ParamCounts
    stages: list[StageResult]
    selection: str | None = Field(default=None, description='which epoch\'s weights each stage kept: "last" or "best"')
    timing: Timing
    latency_us_per_sample: Latency | None = None
    teacher_cache: dict[str, str] | None = Field(default=None, description="per teacher: hit, miss or precomputed")
    rows: RowCounts
    diagnostics: list[str] = []
    device: str | None = None
    data_placement: dict[str, str] | None = Field(default=None, description='stage -> "device", "stream" or "disk"')
