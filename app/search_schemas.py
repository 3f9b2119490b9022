"""HTTP models of searches: a goal (base spec, space, constraints, objectives) and its trials."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.job_status import JobStatus
from app.training import JobSpec

# The sections of a spec a search may vary; dataset, tasks and teachers stay fixed (the teachers
# run once per search), and the name, export and resources are the service's business.
SEARCHABLE_SECTIONS = ("student", "distillation", "weighting", "training")
Metric = Literal["mean_retention", "min_retention", "params", "latency_us"]
TrialState = Literal["running", "complete", "pruned", "failed", "infeasible", "cancelled"]
Sampler = Literal["tpe", "nsga2", "random"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RangeParam(_Strict):
    """A number between low and high (log: sampled on a log scale; integer: whole numbers only)."""

    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "RangeParam":
        if not self.low < self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an integer range needs whole-number bounds")
        return self


class ChoiceParam(_Strict):
    """One of the listed values (numbers, strings, lists such as a trunk's widths, objects)."""

    choices: list[Any] = Field(min_length=1, max_length=64)


class Objective(_Strict):
    metric: Metric
    direction: Literal["maximize", "minimize"]


class Goal(_Strict):
    """Constraints a trial must meet to be feasible, and the objectives of the search."""

    max_params: int | None = Field(default=None, ge=1, description="student parameters")
    max_latency_us: float | None = Field(default=None, gt=0, allow_inf_nan=False,
                                         description="student CPU latency per sample (results.json)")
    min_retention: float | dict[str, Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)]] | None = Field(
        default=None, description="validation metric / teacher's, for every task or per task")
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="mean_retention", direction="maximize")],
        min_length=1, max_length=4)

    @model_validator(mode="after")
    def _distinct(self) -> "Goal":
        if isinstance(self.min_retention, float) and not 0 < self.min_retention <= 2:
            raise ValueError("min_retention must be in (0, 2]")
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError("each objective metric may appear once")
        return self


class SearchCreate(_Strict):
    """A target-driven search: Optuna samples `space` over `base`, each trial is a child job."""

    name: str = Field(default="search", min_length=1, max_length=200)
    base: JobSpec
    space: dict[Annotated[str, Field(min_length=1, max_length=200)], RangeParam | ChoiceParam] = Field(
        min_length=1, max_length=32,
        description="dotted spec paths (e.g. 'student.trunk', 'distillation.temperature') -> a range or choices")
    goal: Goal = Field(default_factory=Goal)
    trials: int = Field(default=20, ge=1, le=500)
    parallel: int = Field(default=2, ge=1, le=64)
    sampler: Sampler = "tpe"
    pruning: Literal["asha", "none"] = "none"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class SearchError(BaseModel):
    code: str
    message: str


class TrialOut(BaseModel):
    number: int
    job_id: str | None
    params: dict[str, Any]
    state: TrialState
    values: list[float] | None = Field(description="objective values, in goal.objectives order")
    measures: dict[str, Any] | None = Field(description="validation retention per task and its mean/min, params, "
                                                        "latency_us, feasible")
    test: dict[str, Any] | None = Field(description="test retention per task: front trials only, at the end")
    final_job_id: str | None = Field(default=None, description="front trials of a light search: the job that "
                                     "evaluated the student on test and exported it (download it there)")


class SearchOut(BaseModel):
    id: str
    name: str
    status: JobStatus
    cancel_requested: bool
    request: dict[str, Any]
    trials: list[TrialOut]
    pareto: list[int] = Field(description="trial numbers on the front of the feasible trials")
    best: int | None = Field(description="the best feasible trial's number")
    error: SearchError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_search(cls, search: Any, trials: list[Any] | None = None) -> "SearchOut":
        summary = search.summary or {}
        error = SearchError(code=search.error_code, message=search.error_message or "") if search.error_code else None
        trials = [TrialOut.model_validate({k: getattr(t, k) for k in TrialOut.model_fields})
                  for t in (search.trials if trials is None else trials)]
        return cls(id=search.id, name=search.name, status=search.status, cancel_requested=search.cancel_requested,
                   request=search.request, trials=trials, pareto=summary.get("pareto", []),
                   best=summary.get("best"), error=error, created_at=search.created_at,
                   started_at=search.started_at, finished_at=search.finished_at)


class SearchSummaryOut(BaseModel):
    """A search in a listing (no trials)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: JobStatus
    created_at: datetime
    finished_at: datetime | None


class SearchList(BaseModel):
    data: list[SearchSummaryOut]
    has_more: bool
