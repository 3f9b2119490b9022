"""JobSpec: the one contract between the API, the worker and the CLI (pydantic only, no torch).

Validate with `JobSpec.model_validate(data)`; `model_dump(mode="json")` writes every default back,
so a stored spec reproduces its job. Cross-field checks run as field validators that read the
fields declared before them (`info.data`), so an error's `loc` names the top-level field and its
message names the exact path, e.g. ``teachers[1].tasks: unknown task 'foo'``.

Only what the engine implements validates; values planned for later (other task kinds,
strategies, teacher sources, file datasets) are rejected with a message saying what is supported.
"""

import copy
import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.training.datasets.catalog import BUILTIN_DATASETS, describe_task

# Task kinds of the contract; the engine implements losses and metrics for SUPPORTED_TASK_KINDS.
TaskKind = Literal["multiclass", "binary", "multilabel", "regression"]
SUPPORTED_TASK_KINDS = ("multiclass", "binary")
KINDS_WITH_CLASSES = ("multiclass", "multilabel")

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp": {
        "description": "shared trunk of Linear+ReLU(+dropout) layers, one Linear+ReLU head per task",
        "fields": {"trunk": "list of trunk widths (teachers may say 'hidden')",
                   "head": "list of per-task head widths", "dropout": "dropout after trunk layers"},
        "feature_taps": ["trunk"],
    },
}
STRATEGIES: dict[str, str] = {
    "task_kd": "per-task soft labels from the teachers at temperature T, mixed with hard labels by alpha",
}
WEIGHTING_METHODS: dict[str, str] = {
    "equal": "every task loss has weight 1",
    "fixed": "user-given weight per task (tasks not listed get 1)",
}
EXPORT_FORMATS = ("safetensors", "onnx")

# Names end up in file names, ONNX output names and CSV headers: keep them plain.
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
Width = Annotated[int, Field(ge=1, le=16384)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
UnitFloat = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _error(kind: str, message: str) -> PydanticCustomError:
    # Braces in user-given names must not be read as format placeholders.
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"))


class DatasetSpec(_Strict):
    """Where the rows come from: a built-in dataset (file uploads will join as another source)."""

    builtin: str

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, name: str) -> str:
        if name not in BUILTIN_DATASETS:
            known = ", ".join(sorted(BUILTIN_DATASETS))
            raise _error("unknown_dataset", f"unknown built-in dataset '{name}'; known: {known}")
        return name


class TaskSpec(_Strict):
    """One prediction task of the multi-task student."""

    name: Name
    kind: TaskKind
    num_classes: int | None = Field(default=None, ge=1, le=100000)

    @field_validator("kind")
    @classmethod
    def _supported_kind(cls, kind: str) -> str:
        if kind not in SUPPORTED_TASK_KINDS:
            supported = ", ".join(SUPPORTED_TASK_KINDS)
            raise _error("unsupported_task_kind",
                         f"task kind '{kind}' is not supported yet; supported: {supported}")
        return kind

    @model_validator(mode="after")
    def _classes_match_kind(self) -> "TaskSpec":
        if self.kind in KINDS_WITH_CLASSES and self.num_classes is None:
            raise _error("missing_num_classes", f"num_classes is required for a {self.kind} task")
        if self.kind == "multiclass" and self.num_classes is not None and self.num_classes < 2:
            raise _error("too_few_classes", "num_classes must be >= 2 for a multiclass task")
        if self.kind not in KINDS_WITH_CLASSES and self.num_classes is not None:
            raise _error("unexpected_num_classes", f"num_classes is not used by a {self.kind} task")
        return self


class ArchSpec(_Strict):
    """A zoo architecture; for `mlp`, `hidden` is accepted as another name for `trunk`."""

    type: Literal["mlp"] = "mlp"
    trunk: list[Width] = Field(default_factory=lambda: [64], max_length=16)
    head: list[Width] = Field(default_factory=list, max_length=16)
    dropout: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _hidden_is_trunk(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hidden" in data:
            if "trunk" in data:
                raise _error("hidden_and_trunk", "give either 'trunk' or 'hidden', not both")
            data = {("trunk" if key == "hidden" else key): value for key, value in data.items()}
        return data


class TrainSourceSpec(_Strict):
    """Train the teacher inside the job on the job's dataset."""

    arch: ArchSpec
    epochs: int = Field(default=30, ge=1, le=10000)
    lr: PositiveFloat = 2e-3
    batch_size: int = Field(default=128, ge=1, le=65536)
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class TeacherSourceSpec(_Strict):
    """Where a teacher comes from; only `train` exists so far (weights/onnx/outputs come later)."""

    train: TrainSourceSpec


class TeacherSpec(_Strict):
    """A teacher covering a subset of the tasks."""

    name: Name
    tasks: list[Name] = Field(min_length=1)
    source: TeacherSourceSpec


class TaskKDOverride(_Strict):
    """Per-task override of the distillation temperature and/or alpha."""

    temperature: PositiveFloat | None = None
    alpha: UnitFloat | None = None


class DistillationSpec(_Strict):
    """How the student learns from the teachers; total per task = alpha*soft + (1-alpha)*hard."""

    strategy: Literal["task_kd"] = "task_kd"
    temperature: PositiveFloat = 4.0
    alpha: UnitFloat = 0.5
    per_task: dict[str, TaskKDOverride] = Field(default_factory=dict)


class WeightingSpec(_Strict):
    """How per-task losses are combined into the total loss."""

    method: Literal["equal", "fixed"] = "equal"
    weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None

    @model_validator(mode="after")
    def _weights_match_method(self) -> "WeightingSpec":
        if self.method == "fixed" and not self.weights:
            raise _error("missing_weights", "weights are required when method is 'fixed'")
        if self.method != "fixed" and self.weights is not None:
            raise _error("unexpected_weights", "weights are only used when method is 'fixed'")
        return self


class TrainingSpec(_Strict):
    """Optimisation budget of the student (and of the baseline)."""

    epochs: int = Field(default=30, ge=1, le=10000)
    batch_size: int = Field(default=128, ge=1, le=65536)
    lr: PositiveFloat = 2e-3
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class JobSpec(_Strict):
    """A whole distillation job (v1)."""

    name: str = Field(min_length=1, max_length=200)
    dataset: DatasetSpec
    tasks: list[TaskSpec] = Field(min_length=1, max_length=64)
    teachers: list[TeacherSpec] = Field(min_length=1, max_length=32)
    student: ArchSpec
    distillation: DistillationSpec = Field(default_factory=DistillationSpec)
    weighting: WeightingSpec = Field(default_factory=WeightingSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    baseline: bool = True
    export: list[Literal["safetensors", "onnx"]] = Field(
        default_factory=lambda: list(EXPORT_FORMATS), max_length=len(EXPORT_FORMATS))

    @field_validator("tasks")
    @classmethod
    def _tasks_fit_dataset(cls, tasks: list[TaskSpec], info: ValidationInfo) -> list[TaskSpec]:
        names = [task.name for task in tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise _error("duplicate_task", f"tasks: duplicate task name(s) {', '.join(duplicates)}")
        dataset = info.data.get("dataset")
        if dataset is None:  # the dataset itself failed validation
            return tasks
        offered = BUILTIN_DATASETS[dataset.builtin]["tasks"]
        for index, task in enumerate(tasks):
            meta = offered.get(task.name)
            if meta is None:
                raise _error("unknown_dataset_task",
                             f"tasks[{index}].name: dataset '{dataset.builtin}' has no task "
                             f"'{task.name}' (available: {', '.join(offered)})")
            if (task.kind, task.num_classes) != (meta["kind"], meta.get("num_classes")):
                raise _error("task_mismatch",
                             f"tasks[{index}]: '{task.name}' is {describe_task(meta)} in dataset "
                             f"'{dataset.builtin}', not {describe_task(task.model_dump())}")
        return tasks

    @field_validator("teachers")
    @classmethod
    def _teachers_cover_tasks(cls, teachers: list[TeacherSpec],
                              info: ValidationInfo) -> list[TeacherSpec]:
        names = [teacher.name for teacher in teachers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise _error("duplicate_teacher",
                         f"teachers: duplicate teacher name(s) {', '.join(duplicates)}")
        for index, teacher in enumerate(teachers):
            if len(set(teacher.tasks)) != len(teacher.tasks):
                raise _error("duplicate_task", f"teachers[{index}].tasks: a task is listed twice")
        tasks = info.data.get("tasks")
        if tasks is None:
            return teachers
        known = [task.name for task in tasks]
        for index, teacher in enumerate(teachers):
            for name in teacher.tasks:
                if name not in known:
                    raise _error("unknown_task", f"teachers[{index}].tasks: unknown task '{name}' "
                                                 f"(tasks: {', '.join(known)})")
        covered = {name for teacher in teachers for name in teacher.tasks}
        uncovered = [name for name in known if name not in covered]
        if uncovered:
            raise _error("uncovered_task",
                         f"teachers: task(s) {', '.join(uncovered)} not covered by any teacher")
        return teachers

    @field_validator("distillation")
    @classmethod
    def _overrides_name_tasks(cls, distillation: DistillationSpec,
                              info: ValidationInfo) -> DistillationSpec:
        _check_task_keys(distillation.per_task, info, "distillation.per_task")
        return distillation

    @field_validator("weighting")
    @classmethod
    def _weights_name_tasks(cls, weighting: WeightingSpec, info: ValidationInfo) -> WeightingSpec:
        _check_task_keys(weighting.weights or {}, info, "weighting.weights")
        return weighting

    @field_validator("export")
    @classmethod
    def _unique_formats(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise _error("duplicate_format", "export: a format is listed twice")
        return formats

    def task(self, name: str) -> TaskSpec:
        """Return the task called `name`."""
        return next(task for task in self.tasks if task.name == name)

    def kd_settings(self, task: str) -> tuple[float, float]:
        """Return (temperature, alpha) for a task, per-task overrides applied."""
        override = self.distillation.per_task.get(task, TaskKDOverride())
        temperature = override.temperature or self.distillation.temperature
        alpha = self.distillation.alpha if override.alpha is None else override.alpha
        return temperature, alpha


def _check_task_keys(mapping: dict[str, Any], info: ValidationInfo, path: str) -> None:
    tasks = info.data.get("tasks")
    if tasks is None:
        return
    known = [task.name for task in tasks]
    for name in mapping:
        if name not in known:
            raise _error("unknown_task", f"{path}: unknown task '{name}' (tasks: {', '.join(known)})")


def spec_sha256(spec: JobSpec) -> str:
    """Return the sha256 hex digest of the spec's canonical JSON (defaults included)."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def catalog() -> dict[str, Any]:
    """Return the built-in datasets, architectures, strategies and weighting methods."""
    return copy.deepcopy({
        "datasets": BUILTIN_DATASETS,
        "architectures": ARCHITECTURES,
        "strategies": STRATEGIES,
        "weighting_methods": WEIGHTING_METHODS,
        "task_kinds": list(SUPPORTED_TASK_KINDS),
        "teacher_sources": ["train"],
        "export_formats": list(EXPORT_FORMATS),
    })
