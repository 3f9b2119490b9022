"""JobSpec: the one contract between the API, the worker and the CLI (pydantic only, no torch).

Validate with `JobSpec.model_validate(data)`; `model_dump(mode="json")` writes every default back,
so a stored spec reproduces its job. Cross-field checks run as field validators that read the
fields declared before them (`info.data`), so an error's `loc` names the top-level field and its
message names the exact path, e.g. ``teachers[1].tasks: unknown task 'foo'``.

Only what the engine implements validates; values planned for later (other task kinds, file
datasets) are rejected with a message saying what is supported.
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
SUPPORTED_TASK_KINDS = ("multiclass", "binary", "multilabel", "regression")
KINDS_WITH_CLASSES = ("multiclass", "multilabel")

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp": {
        "description": "shared trunk of Linear+ReLU(+dropout) layers, one Linear+ReLU head per task",
        "fields": {"trunk": "list of trunk widths (teachers may say 'hidden')",
                   "head": "list of per-task head widths", "dropout": "dropout after trunk layers"},
        "feature_taps": ["trunk"],
    },
    "cnn1d": {
        "description": ("sequences (channels, length) or (length,): Conv1d+ReLU+MaxPool(2) per "
                        "channel width, global average pooling, dense trunk, one head per task"),
        "fields": {"channels": "conv widths (default [32, 64])",
                   "kernel_size": "odd conv kernel size (default 5)",
                   "trunk": "dense widths after pooling", "head": "list of per-task head widths",
                   "dropout": "dropout after dense trunk layers"},
        "feature_taps": ["trunk"],
    },
    "cnn2d": {
        "description": ("images (channels, height, width) or (height, width): as cnn1d with "
                        "Conv2d and MaxPool2d"),
        "fields": {"channels": "conv widths (default [32, 64])",
                   "kernel_size": "odd conv kernel size (default 5)",
                   "trunk": "dense widths after pooling", "head": "list of per-task head widths",
                   "dropout": "dropout after dense trunk layers"},
        "feature_taps": ["trunk"],
    },
}
# Input ranks (without the batch axis) each architecture accepts; mlp flattens anything.
ARCH_INPUT_RANKS: dict[str, tuple[int, ...]] = {"cnn1d": (1, 2), "cnn2d": (2, 3)}
STRATEGIES: dict[str, str] = {
    "task_kd": "per-task soft labels from the teachers at temperature T, mixed with hard labels by alpha",
    "feature_kd": "trunk features matched to each teacher's through a learned adaptor (normalised MSE)",
    "cascaded": "stage 1 distils the trunk by features, stage 2 trains the whole student with task_kd",
    "transfer": "teachers from a source domain; student on the target with label_fraction of labels",
}
StrategyName = Literal["task_kd", "feature_kd", "cascaded", "transfer"]
# The loss terms each preset adds to the per-task hard loss ("feature" = feature distillation).
PRESET_TERMS: dict[str, list[str]] = {
    "task_kd": ["soft"], "feature_kd": ["feature"], "cascaded": ["soft"], "transfer": ["soft"]}
TEACHER_SOURCES: dict[str, str] = {
    "train": "zoo architecture trained inside the job (on the job's dataset or another built-in)",
    "weights": "safetensors file of a zoo architecture",
    "onnx": "ONNX model run with onnxruntime; outputs named after tasks or one concatenated output",
    "torchscript": ("TorchScript module (torch.jit.load); runs the code inside it, so only accepted when "
                    "DISTILLERY_ALLOW_TORCHSCRIPT=true; returns a dict keyed by task or one concatenated tensor"),
    "outputs": "NPZ of precomputed logits per task (and optional features) aligned with the rows",
}
WEIGHTING_METHODS: dict[str, str] = {
    "equal": "every task loss has weight 1",
    "fixed": "user-given weight per task (tasks not listed get 1)",
    "uncertainty": ("Kendall et al. 2018: a learned log-variance s per task, "
                    "loss = sum(exp(-s) * L + s)"),
    "dwa": ("Liu et al. 2019: weights K * softmax(r / T) from each task's loss ratio "
            "r = L(t-1) / L(t-2) over the last two epochs; 'temperature' T (default 2)"),
    "gradnorm": ("Chen et al. 2018: learned weights (summing to the number of tasks) that balance "
                 "the gradient norms at the last shared trunk layer; 'alpha' (default 1.5)"),
}
EXPORT_FORMATS = ("safetensors", "onnx")

# Names end up in file names, ONNX output names and CSV headers: keep them plain.
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
Width = Annotated[int, Field(ge=1, le=16384)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
UnitFloat = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
# A file reference: a local path now; the uploads API maps its file ids through the same resolver.
FileRef = Annotated[str, Field(min_length=1, max_length=1000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _error(kind: str, message: str) -> PydanticCustomError:
    # Braces in user-given names must not be read as format placeholders.
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"))


def _unset(value: Any) -> bool:
    return value is None


class DatasetSpec(_Strict):
    """Where the rows come from: a built-in dataset, or an uploaded file (NPZ, CSV or Parquet).

    Files: NPZ holds `x` and `y_<task>` arrays (optional `split`); a table maps each task to a
    column (`targets`, default: the column named after the task; multilabel: a list of columns),
    its features are `features` (default: every other column), and `split_column` may fix the split.
    """

    # Only the fields given are stored (a built-in spec keeps its original form and sha256).
    builtin: str | None = Field(default=None, exclude_if=_unset)
    file: FileRef | None = Field(default=None, exclude_if=_unset)
    format: Literal["npz", "csv", "parquet"] | None = Field(default=None, exclude_if=_unset)
    targets: dict[str, str | list[str]] | None = Field(default=None, exclude_if=_unset)
    features: list[str] | None = Field(default=None, exclude_if=_unset, min_length=1)
    split_column: str | None = Field(default=None, exclude_if=_unset)
    # Tables: numeric features are standardised with train statistics unless this is false (set it
    # false when an uploaded teacher expects the raw feature values).
    standardize: bool | None = Field(default=None, exclude_if=_unset)

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, name: str | None) -> str | None:
        return None if name is None else _known_dataset(name)

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        if (self.builtin is None) == (self.file is None):
            raise _error("dataset_source", "dataset: give exactly one of 'builtin' or 'file'")
        if self.file is not None and self.format is None:
            raise _error("dataset_format", "dataset.format: say how to read the file: npz, csv or parquet")
        table_only = [f for f in ("targets", "features", "split_column", "standardize") if getattr(self, f) is not None]
        if table_only and self.format != "csv" and self.format != "parquet":
            raise _error("dataset_table_fields", f"dataset.{table_only[0]}: only for csv or parquet files")
        return self


def _known_dataset(name: str) -> str:
    if name not in BUILTIN_DATASETS:
        known = ", ".join(sorted(BUILTIN_DATASETS))
        raise _error("unknown_dataset", f"unknown built-in dataset '{name}'; known: {known}")
    return name


class TaskSpec(_Strict):
    """One prediction task of the multi-task student."""

    name: Name
    kind: TaskKind
    num_classes: int | None = Field(default=None, ge=1, le=100000)
    distill: bool = True  # False: hard labels only, no teacher needed and no soft term

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
    """A zoo architecture; `hidden` is accepted as another name for `trunk`.

    `channels` and `kernel_size` belong to cnn1d/cnn2d (defaults filled in there, absent from an
    mlp's stored form); for those, `trunk` lists the dense layers after global pooling.
    """

    type: Literal["mlp", "cnn1d", "cnn2d"] = "mlp"
    trunk: list[Width] = Field(default_factory=lambda: [64], max_length=16)
    head: list[Width] = Field(default_factory=list, max_length=16)
    dropout: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.0
    channels: list[Width] | None = Field(default=None, min_length=1, max_length=16,
                                         exclude_if=lambda value: value is None)
    kernel_size: int | None = Field(default=None, ge=1, le=31, exclude_if=lambda value: value is None)

    @model_validator(mode="after")
    def _conv_fields_match_type(self) -> "ArchSpec":
        if self.type not in ARCH_INPUT_RANKS:
            given = [name for name in ("channels", "kernel_size") if getattr(self, name) is not None]
            if given:
                raise _error("unexpected_conv_field",
                             f"{', '.join(given)}: only used by cnn1d and cnn2d, not {self.type}")
            return self
        self.channels = self.channels or [32, 64]
        self.kernel_size = self.kernel_size or 5
        if self.kernel_size % 2 == 0:
            raise _error("even_kernel_size", "kernel_size must be odd (convolutions keep the size)")
        return self

    @model_validator(mode="before")
    @classmethod
    def _hidden_is_trunk(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hidden" in data:
            if "trunk" in data:
                raise _error("hidden_and_trunk", "give either 'trunk' or 'hidden', not both")
            data = {("trunk" if key == "hidden" else key): value for key, value in data.items()}
        return data


class TrainSourceSpec(_Strict):
    """Train the teacher inside the job on the job's dataset or on another built-in one."""

    arch: ArchSpec
    epochs: int = Field(default=30, ge=1, le=10000)
    lr: PositiveFloat = 2e-3
    batch_size: int = Field(default=128, ge=1, le=65536)
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    dataset: str | None = None  # source domain: a built-in dataset offering the same tasks

    @field_validator("dataset")
    @classmethod
    def _known_source(cls, name: str | None) -> str | None:
        return None if name is None else _known_dataset(name)


class WeightsSourceSpec(_Strict):
    """A zoo architecture loaded from a safetensors file (its state_dict)."""

    file: FileRef
    arch: ArchSpec


class OnnxSourceSpec(_Strict):
    """An ONNX model run with onnxruntime on the job's inputs (its first input)."""

    file: FileRef
    # "by_task": one output per task, named after it; "concatenated": the first output holds
    # every task's logits side by side in the teacher's task order.
    outputs: Literal["by_task", "concatenated"] = "by_task"
    features: str | None = None  # name of an output with trunk features (batch, width)


class TorchScriptSourceSpec(_Strict):
    """A TorchScript module (torch.jit.save archive) called on the job's inputs, on the CPU.

    Loading it runs the code it carries: the server accepts it only with DISTILLERY_ALLOW_TORCHSCRIPT=true.
    """

    file: FileRef
    # The module returns either a dict with one tensor per task (keyed by task name, plus the
    # `features` key if given) or one tensor holding every task's logits side by side in the
    # teacher's task order.
    features: str | None = None  # key of the returned dict with trunk features (batch, width)


class OutputsSourceSpec(_Strict):
    """Precomputed teacher outputs: NPZ with `train.<task>`/`test.<task>` logits (rows aligned)."""

    file: FileRef
    features: bool = False  # True: the NPZ also holds `train.features` and `test.features`


class TeacherSourceSpec(_Strict):
    """Where a teacher comes from: exactly one of train, weights, onnx, outputs."""

    # Only the given source is stored (the others are left out, not written as null).
    train: TrainSourceSpec | None = Field(default=None, exclude_if=lambda value: value is None)
    weights: WeightsSourceSpec | None = Field(default=None, exclude_if=lambda value: value is None)
    onnx: OnnxSourceSpec | None = Field(default=None, exclude_if=lambda value: value is None)
    torchscript: TorchScriptSourceSpec | None = Field(default=None, exclude_if=lambda value: value is None)
    outputs: OutputsSourceSpec | None = Field(default=None, exclude_if=lambda value: value is None)

    @model_validator(mode="after")
    def _exactly_one(self) -> "TeacherSourceSpec":
        given = [name for name in TEACHER_SOURCES if getattr(self, name) is not None]
        if len(given) != 1:
            raise _error("teacher_source", "give exactly one teacher source of "
                         f"{', '.join(TEACHER_SOURCES)} (got {', '.join(given) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        """Return which source this is: train, weights, onnx or outputs."""
        return next(name for name in TEACHER_SOURCES if getattr(self, name) is not None)

    @property
    def exposes_features(self) -> bool:
        """Return whether this teacher provides trunk features for feature distillation."""
        if self.onnx is not None:
            return self.onnx.features is not None
        if self.torchscript is not None:
            return self.torchscript.features is not None
        if self.outputs is not None:
            return self.outputs.features
        return True  # zoo models tap their trunk


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
    """How the student learns from the teachers; total per task = alpha*soft + (1-alpha)*hard.

    `terms` defaults to the strategy's preset and can combine them, e.g. ["soft", "feature"].
    """

    strategy: StrategyName = "task_kd"
    terms: list[Literal["soft", "feature"]] | None = Field(default=None, min_length=1)
    temperature: PositiveFloat = 4.0
    alpha: UnitFloat = 0.5
    per_task: dict[str, TaskKDOverride] = Field(default_factory=dict)
    feature_weight: PositiveFloat = 1.0  # weight of each teacher's feature term
    trunk_epochs: int | None = Field(default=None, ge=1, le=10000)  # cascaded stage 1
    label_fraction: UnitFloat = 1.0  # share of training rows whose labels the student sees
    online: bool = False  # run the teachers every step (for augmentation) instead of the cache

    @model_validator(mode="after")
    def _preset_defaults(self) -> "DistillationSpec":
        if self.terms is None:
            self.terms = list(PRESET_TERMS[self.strategy])
        if len(set(self.terms)) != len(self.terms):
            raise _error("duplicate_term", "terms: a loss term is listed twice")
        if self.strategy == "cascaded":
            self.trunk_epochs = self.trunk_epochs or 10
        elif self.trunk_epochs is not None:
            raise _error("unexpected_trunk_epochs", "trunk_epochs is only used by 'cascaded'")
        return self


class TransferSetSpec(_Strict):
    """Unlabelled extra inputs the teachers label: generated by the dataset, or an NPZ `x` file."""

    generate: int | None = Field(default=None, ge=1, le=10_000_000)
    file: FileRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "TransferSetSpec":
        if (self.generate is None) == (self.file is None):
            raise _error("transfer_source", "give exactly one of 'generate' (a number of new "
                         "samples) or 'file' (an NPZ with an array 'x')")
        return self


class WeightingSpec(_Strict):
    """How per-task losses are combined into the total loss (see WEIGHTING_METHODS).

    `alpha` (GradNorm, default 1.5) and `temperature` (DWA, default 2) are filled in for their
    method only and absent from the stored form of the others.
    """

    method: Literal["equal", "fixed", "uncertainty", "dwa", "gradnorm"] = "equal"
    weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None
    alpha: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] | None = Field(
        default=None, exclude_if=lambda value: value is None)
    temperature: PositiveFloat | None = Field(default=None, exclude_if=lambda value: value is None)

    @model_validator(mode="after")
    def _weights_match_method(self) -> "WeightingSpec":
        if self.method == "fixed" and not self.weights:
            raise _error("missing_weights", "weights are required when method is 'fixed'")
        if self.method != "fixed" and self.weights is not None:
            raise _error("unexpected_weights", "weights are only used when method is 'fixed'")
        for name, method, default in (("alpha", "gradnorm", 1.5), ("temperature", "dwa", 2.0)):
            if self.method == method:
                setattr(self, name, default if getattr(self, name) is None else getattr(self, name))
            elif getattr(self, name) is not None:
                raise _error("unexpected_weighting_field",
                             f"{name} is only used when method is '{method}'")
        return self


class TrainingSpec(_Strict):
    """Optimisation budget of the student (and of the baseline)."""

    epochs: int = Field(default=30, ge=1, le=10000)
    batch_size: int = Field(default=128, ge=1, le=65536)
    lr: PositiveFloat = 2e-3
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    input_noise: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 0.0  # augmentation
    # Where training rows live: all on the device (index slices) or streamed by a DataLoader.
    data_placement: Literal["auto", "device", "stream"] = "auto"
    loader_workers: int = Field(default=0, ge=0, le=32)  # DataLoader processes ("stream" only)
    compile: bool = False  # torch.compile the student's forward


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
    transfer_set: TransferSetSpec | None = None

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
        if dataset.builtin is None:  # an uploaded file: its columns are checked when it is read
            unknown = sorted(set(dataset.targets or {}) - set(names))
            if unknown:
                raise _error("unknown_task", f"dataset.targets: unknown task(s) {', '.join(unknown)} "
                                             f"(tasks: {', '.join(names)})")
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
        uncovered = [task.name for task in tasks if task.distill and task.name not in covered]
        if uncovered:
            raise _error("uncovered_task",
                         f"teachers: task(s) {', '.join(uncovered)} not covered by any teacher; "
                         "cover them or mark them hard-label only with \"distill\": false")
        dataset = info.data.get("dataset")
        for index, teacher in enumerate(teachers):
            source = teacher.source.train
            if dataset is not None and dataset.builtin and source is not None and source.dataset is not None:
                _check_source_domain(source.dataset, dataset.builtin, teacher, tasks, index)
        return teachers

    @field_validator("teachers")
    @classmethod
    def _teacher_archs_fit_inputs(cls, teachers: list[TeacherSpec],
                                  info: ValidationInfo) -> list[TeacherSpec]:
        dataset = info.data.get("dataset")
        for index, teacher in enumerate(teachers if dataset is not None and dataset.builtin else []):
            source, path = teacher.source, f"teachers[{index}].source"
            if source.train is not None:
                _check_arch_inputs(source.train.arch, source.train.dataset or dataset.builtin,
                                   f"{path}.train.arch")
            elif source.weights is not None:
                _check_arch_inputs(source.weights.arch, dataset.builtin, f"{path}.weights.arch")
        return teachers

    @field_validator("distillation")
    @classmethod
    def _overrides_name_tasks(cls, distillation: DistillationSpec,
                              info: ValidationInfo) -> DistillationSpec:
        _check_task_keys(distillation.per_task, info, "distillation.per_task")
        return distillation

    @field_validator("distillation")
    @classmethod
    def _strategy_fits_teachers(cls, distillation: DistillationSpec,
                                info: ValidationInfo) -> DistillationSpec:
        teachers = info.data.get("teachers")
        if teachers is None:
            return distillation
        if "feature" in (distillation.terms or []) or distillation.strategy == "cascaded":
            for index, teacher in enumerate(teachers):
                if not teacher.source.exposes_features:
                    raise _error("teacher_without_features", (
                        f"distillation: feature distillation needs features from every teacher; "
                        f"teachers[{index}].source.{teacher.source.kind} has none (set its "
                        "'features')"))
        if distillation.strategy == "transfer" and not any(
                teacher.source.kind != "train" or teacher.source.train.dataset is not None
                for teacher in teachers):
            raise _error("transfer_without_source", (
                "distillation.strategy: 'transfer' needs a source-domain teacher: set "
                "teachers[i].source.train.dataset to another built-in dataset, or give weights, "
                "onnx or outputs trained elsewhere"))
        if distillation.online:
            for index, teacher in enumerate(teachers):
                if teacher.source.kind == "outputs":
                    raise _error("online_needs_model", (
                        f"distillation.online: teachers[{index}] gives precomputed outputs, "
                        "which cannot run on augmented inputs"))
        return distillation

    @field_validator("student")
    @classmethod
    def _student_fits_inputs(cls, student: ArchSpec, info: ValidationInfo) -> ArchSpec:
        dataset = info.data.get("dataset")
        if dataset is not None and dataset.builtin:  # a file's shape is checked when it is read
            _check_arch_inputs(student, dataset.builtin, "student")
        return student

    @field_validator("weighting")
    @classmethod
    def _weights_name_tasks(cls, weighting: WeightingSpec, info: ValidationInfo) -> WeightingSpec:
        _check_task_keys(weighting.weights or {}, info, "weighting.weights")
        student = info.data.get("student")
        if weighting.method == "gradnorm" and student is not None and student.type == "mlp" \
                and not student.trunk:
            raise _error("gradnorm_without_trunk", (
                "weighting.method: gradnorm balances gradient norms at the last shared trunk "
                "layer; give the student a non-empty 'trunk'"))
        return weighting

    @field_validator("baseline")
    @classmethod
    def _baseline_has_labels(cls, baseline: bool, info: ValidationInfo) -> bool:
        distillation = info.data.get("distillation")
        if baseline and distillation is not None and distillation.label_fraction == 0:
            raise _error("baseline_without_labels", (
                "baseline: with distillation.label_fraction 0 the no-KD baseline has no labels "
                "to learn from; set baseline to false"))
        return baseline

    @field_validator("transfer_set")
    @classmethod
    def _transfer_set_is_labelled(cls, transfer_set: TransferSetSpec | None,
                                  info: ValidationInfo) -> TransferSetSpec | None:
        if transfer_set is None:
            return None
        dataset, teachers = info.data.get("dataset"), info.data.get("teachers") or []
        if transfer_set.generate is not None and dataset is not None and not (
                dataset.builtin and BUILTIN_DATASETS[dataset.builtin].get("transfer_generator")):
            generating = sorted(name for name, meta in BUILTIN_DATASETS.items()
                                if meta.get("transfer_generator"))
            raise _error("no_generator", (
                f"transfer_set.generate: dataset '{dataset.builtin or dataset.file}' cannot generate new samples "
                f"(datasets that can: {', '.join(generating) or 'none'}); give a 'file' instead"))
        for index, teacher in enumerate(teachers):
            if teacher.source.kind == "outputs":
                raise _error("outputs_cannot_label", (
                    f"transfer_set: teachers[{index}] gives precomputed outputs for the dataset's "
                    "rows only and cannot label a transfer set"))
        tasks = info.data.get("tasks") or []
        if tasks and not any(task.distill for task in tasks):
            raise _error("nothing_to_distill", "transfer_set: every task is hard-label only")
        return transfer_set

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


def _check_source_domain(source: str, target: str, teacher: "TeacherSpec",
                         tasks: list[TaskSpec], index: int) -> None:
    """Check that a source-domain dataset offers the teacher's tasks and the target's inputs."""
    path = f"teachers[{index}].source.train.dataset"
    meta, target_meta = BUILTIN_DATASETS[source], BUILTIN_DATASETS[target]
    if meta["input_shape"] != target_meta["input_shape"]:
        raise _error("source_shape_mismatch", (
            f"{path}: '{source}' has inputs {meta['input_shape']}, the job's dataset "
            f"'{target}' has {target_meta['input_shape']}"))
    for name in teacher.tasks:
        task = next(task for task in tasks if task.name == name)
        offered = meta["tasks"].get(name)
        if offered is None or (offered["kind"], offered.get("num_classes")) != (
                task.kind, task.num_classes):
            raise _error("source_task_mismatch", (
                f"{path}: '{source}' offers no task '{name}' with {describe_task(task.model_dump())}"
                f" outputs (available: {', '.join(meta['tasks'])})"))


def input_rank_problem(arch: ArchSpec, shape: Any) -> str | None:
    """Say why an architecture cannot take inputs of this shape, or None when it can."""
    ranks = ARCH_INPUT_RANKS.get(arch.type)
    if ranks is not None and len(shape) not in ranks:
        return f"{arch.type} takes inputs of rank {' or '.join(map(str, ranks))}"
    return None


def _check_arch_inputs(arch: ArchSpec, dataset: str, path: str) -> None:
    """Check that an architecture accepts a built-in dataset's input shape."""
    shape = BUILTIN_DATASETS[dataset]["input_shape"]
    problem = input_rank_problem(arch, shape)
    if problem:
        raise _error("arch_input_mismatch", f"{path}.type: {problem}; dataset '{dataset}' has inputs {shape}")


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
        "teacher_sources": TEACHER_SOURCES,
        "export_formats": list(EXPORT_FORMATS),
    })
