"""JobSpec: the one contract between the API, the worker and the CLI (pydantic only, no torch).

Validate with `JobSpec.model_validate(data)`; `model_dump(mode="json")` writes every default back,
so a stored spec reproduces its job. Cross-field checks run as field validators that read the
fields declared before them (`info.data`), so an error's `loc` names the top-level field and its
message names the exact path, e.g. ``teachers[1].tasks: unknown task 'foo'``. The sections
themselves are in spec_sections.py, the names they accept in catalog.py.
"""

import hashlib
import json
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from app.training.catalog import (ARCH_INPUT_RANKS, AUGMENT_INPUT_RANKS, EMBEDDING_ARCHS,
                                  EXPORT_FORMATS, ExportFormat)
from app.training.datasets.catalog import BUILTIN_DATASETS, describe_task
from app.training.spec_sections import (ArchSpec, DatasetSpec, DistillationSpec,
                                        EarlyStoppingSpec, MlflowTrackingSpec, ResourcesSpec,
                                        TaskKDOverride, TaskSpec, TrackingSpec, TrainingSpec,
                                        TransferSetSpec, WeightingSpec, _error, _Strict)
from app.training.spec_teachers import (OnnxSourceSpec, OutputsSourceSpec, TeacherSourceSpec,
                                        TeacherSpec, TorchScriptSourceSpec, TrainSourceSpec,
                                        WeightsSourceSpec)
from app.training.spec_trial import TrialSpec

__all__ = ["ArchSpec", "DatasetSpec", "DistillationSpec", "EarlyStoppingSpec", "JobSpec",
           "MlflowTrackingSpec", "OnnxSourceSpec", "OutputsSourceSpec", "ResourcesSpec", "TaskKDOverride",
           "TaskSpec", "TeacherSourceSpec", "TeacherSpec", "TorchScriptSourceSpec",
           "TrackingSpec", "TrainSourceSpec", "TrainingSpec", "TransferSetSpec", "WeightingSpec",
           "WeightsSourceSpec", "input_rank_problem",
           "spec_sha256"]


class NotifySpec(_Strict):
    """What to announce to the tenant's webhooks besides start and end (the engine ignores it)."""

    # job.task_milestone, once per task, when the student's validation metric first reaches this
    # share of its teacher's (teacher / student for lower-is-better metrics)
    retention: float | None = Field(default=None, gt=0, le=2, allow_inf_nan=False)


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
    export: list[ExportFormat] = Field(
        default_factory=lambda: list(EXPORT_FORMATS), max_length=len(EXPORT_FORMATS))
    transfer_set: TransferSetSpec | None = None
    notify: NotifySpec | None = Field(default=None, exclude_if=lambda value: value is None)
    # MLflow; changes no result, and a spec without it dumps (and hashes) as before it existed.
    tracking: TrackingSpec | None = Field(default=None, exclude_if=lambda value: value is None)
    # Data-parallel processes; a one-device spec dumps (and hashes) as before the section existed.
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec,
                                     exclude_if=lambda value: value.devices == 1)
    # A search's child (spec_trial.py); absent from an ordinary job's dump and hash.
    trial: TrialSpec | None = Field(default=None, exclude_if=lambda value: value is None)

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
                if source.dataset == dataset.builtin:
                    raise _error("source_is_target", (
                        f"teachers[{index}].source.train.dataset: '{source.dataset}' is the job's own "
                        "dataset; a source-domain teacher must name another dataset (leave it out "
                        "to train on the job's labelled rows)"))
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
                own = source.train.dataset is None  # a source domain is read in its default encoding
                _check_arch_inputs(source.train.arch, source.train.dataset or dataset.builtin,
                                   f"{path}.train.arch", dataset.encoding if own else None)
            elif source.weights is not None:
                _check_arch_inputs(source.weights.arch, dataset.builtin, f"{path}.weights.arch",
                                   dataset.encoding)
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
            _check_arch_inputs(student, dataset.builtin, "student", dataset.encoding)
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

    @field_validator("distillation")
    @classmethod
    def _in_job_teachers_have_labels(cls, distillation: DistillationSpec,
                                     info: ValidationInfo) -> DistillationSpec:
        for index, teacher in enumerate(info.data.get("teachers") or []):
            source = teacher.source.train
            if distillation.label_fraction == 0 and source is not None and source.dataset is None:
                raise _error("teacher_without_labels", (
                    f"distillation.label_fraction: 0 leaves teachers[{index}] no labelled row "
                    "to train on (in-job teachers see the job's labelled rows only); train it on "
                    "another dataset (source.train.dataset) or bring it (weights, onnx, outputs)"))
        return distillation

    @field_validator("baseline")
    @classmethod
    def _baseline_has_labels(cls, baseline: bool, info: ValidationInfo) -> bool:
        distillation = info.data.get("distillation")
        if baseline and distillation is not None and distillation.label_fraction == 0:
            raise _error("baseline_without_labels", (
                "baseline: with distillation.label_fraction 0 the no-KD baseline has no labels "
                "to learn from; set baseline to false"))
        return baseline

    @model_validator(mode="after")
    def _disk_rows_stream(self) -> "JobSpec":
        from app.training.spec_disk import check_disk_placement

        check_disk_placement(self, _error)  # what a job whose rows stay on disk may ask for
        return self

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

    @field_validator("training")
    @classmethod
    def _changed_inputs_need_online_teachers(cls, training: TrainingSpec,
                                             info: ValidationInfo) -> TrainingSpec:
        distillation = info.data.get("distillation")
        if distillation is None or distillation.online:
            return training
        augment = training.augment
        # (error type, field, what the student's inputs become, the field's "off" value, is it on)
        for kind, path, changed, off, on in (
                ("noise_without_online", "training.input_noise", "noisy", "0",
                 training.input_noise > 0),
                ("augment_without_online", "training.augment", "augmented", "null",
                 augment is not None and (augment.crop_padding > 0 or augment.flip))):
            if on:
                raise _error(kind, (
                    f"{path}: the cached teacher targets were computed on clean inputs, which the "
                    f"{changed} student never sees; set distillation.online to true (the teachers "
                    f"then label each {changed} batch) or {path} to {off}"))
        return training

    @field_validator("training")
    @classmethod
    def _augment_fits_inputs(cls, training: TrainingSpec, info: ValidationInfo) -> TrainingSpec:
        dataset = info.data.get("dataset")
        # A file's shape is known when it is read: augment.py checks the batches then.
        if training.augment is not None and dataset is not None and dataset.builtin:
            shape = BUILTIN_DATASETS[dataset.builtin]["input_shape"]
            if len(shape) not in AUGMENT_INPUT_RANKS:
                raise _error("augment_input_rank", (
                    f"training.augment: crops and flips need images, (height, width) or (channels, "
                    f"height, width); dataset '{dataset.builtin}' has inputs {shape}"))
        return training

    @field_validator("resources")
    @classmethod
    def _batch_splits_over_devices(cls, resources: ResourcesSpec,
                                   info: ValidationInfo) -> ResourcesSpec:
        training = info.data.get("training")
        batches = [("training.batch_size", training.batch_size)] if training is not None else []
        batches += [(f"teachers[{index}].source.train.batch_size", teacher.source.train.batch_size)
                    for index, teacher in enumerate(info.data.get("teachers") or [])
                    if teacher.source.train is not None]
        for path, size in batches:
            if size % resources.devices:
                raise _error("batch_not_divisible", (
                    f"resources.devices: {path} {size} is a global batch and must split evenly "
                    f"over {resources.devices} devices; use a multiple of {resources.devices}"))
        return resources

    @field_validator("export")
    @classmethod
    def _unique_formats(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise _error("duplicate_format", "export: a format is listed twice")
        return formats

    @model_validator(mode="after")
    def _text_fits_models(self) -> "JobSpec":
        from app.training.spec_text import check_text_job

        check_text_job(self, _error)  # text <-> transformer archs; layer terms need one teacher
        return self

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


def _check_arch_inputs(arch: ArchSpec, dataset: str, path: str, encoding: str | None = None) -> None:
    """Check that an architecture accepts a built-in dataset's input shape (and category codes,
    under its `encoding`, default: the dataset's own)."""
    meta = BUILTIN_DATASETS[dataset]
    offered = meta.get("encodings", {})
    encoding = encoding or next(iter(offered), None)
    shape = offered[encoding] if encoding in offered else meta["input_shape"]
    if encoding == "embedding" and arch.type not in EMBEDDING_ARCHS:
        raise _error("arch_input_mismatch", (
            f"{path}.type: {arch.type} cannot read category codes; dataset '{dataset}' gives them "
            f"under encoding 'embedding': use {', '.join(EMBEDDING_ARCHS)}, or dataset.encoding 'onehot'"))
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


