"""A job's dry run: resolve its data and teachers, push one batch through every model on CPU, and
summarise what training would do (no training, nothing written)."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.datasets.registry import load_dataset
from app.training.datasets.splits import DatasetSplits, with_validation
from app.training.datasets.streamed import load_disk_data
from app.training.errors import TrainingError
from app.training.files import FileResolver, LocalFileResolver
from app.training.models import build_model, count_params, output_size
from app.training.precision import check_pool_precision
from app.training.spec import JobSpec
from app.training.stage_data import check_input_ranks, label_mask, stratify_task
from app.training.strategies import plan_stages, steps_per_epoch
from app.training.teacher_targets import build_teacher, precomputed_rows, read_transfer_file
from app.training.teachers import PrecomputedTeacher
from app.training.text import is_text_job, load_text_data
from app.training.text_kd import text_summary

BATCH_ROWS = 8
DRY_RUN_CACHE = Path(tempfile.gettempdir()) / "distillery-dry-run"
FLOAT_BYTES = 4

# Built-in datasets loaded by a long-lived validator process, by (name, task names): they never change,
# and loading one costs more than the rest of a dry run.
_BUILTIN_CACHE: dict[tuple[str, tuple[str, ...]], DatasetSplits] = {}


class DryRunError(TrainingError):
    """A TrainingError with the spec field it concerns (e.g. ``body.teachers[0]``), for a 422's ``errors``."""

    def __init__(self, *, code: str, message: str, field: str) -> None:
        super().__init__(code=code, message=message)
        self.field = field


@contextmanager
def _blame(field: str) -> Iterator[None]:
    """Re-raise a TrainingError from the block as a DryRunError naming ``field``."""
    try:
        yield
    except DryRunError:
        raise
    except TrainingError as exc:
        raise DryRunError(code=exc.code, message=exc.message, field=field) from exc


def dry_run(spec: JobSpec, *, resolver: FileResolver | None = None, allow_torchscript: bool = False,
            cache_builtin: bool = False, accelerator: str = "auto") -> dict[str, Any]:
    """Return params per model, compression ratio, stages, steps per epoch and the teacher-cache size.

    Raises DryRunError (a TrainingError with a code, a message a user can act on and the spec field
    at fault) when data or a teacher is unusable. ``cache_builtin`` keeps built-in datasets in memory
    for the next call (for a process that validates many specs). ``accelerator`` is what the
    workers train on ("cpu", "cuda", or "auto": this host's); fp16 is refused where it is the CPU.
    """
    resolver = resolver or LocalFileResolver()
    with _blame("body.training.precision"):
        check_pool_precision(spec.training.precision, device=spec.training.device, accelerator=accelerator)
    with _blame("body.dataset"):
        data = _load(spec, resolver=resolver, cache_builtin=cache_builtin)
        data = with_validation(data, fraction=spec.dataset.validation_fraction,
                               seed=spec.training.seed, stratify_by=stratify_task(spec.tasks))
        check_input_ranks(spec, data.input_shape, data.layout)  # a file's shape is known only now
    assert data.x_val is not None
    batch = data.x_train[:BATCH_ROWS]  # (batch, *input_shape)
    transfer_rows = (spec.transfer_set.generate or 0) if spec.transfer_set is not None else 0
    if spec.transfer_set is not None and spec.transfer_set.file is not None:
        with _blame("body.transfer_set.file"):  # its shape and, for tables, its category codes
            transfer_rows = len(read_transfer_file(spec.transfer_set.file, input_shape=data.input_shape,
                                                   resolver=resolver, layout=data.layout))
    labelled = label_mask(spec, len(data.x_train))
    rows = {"train": len(data.x_train), "validation": len(data.x_val), "test": len(data.x_test),
            "labelled": len(data.x_train) if labelled is None else int(labelled.sum()),
            "transfer": transfer_rows}
    teacher_params: dict[str, int | None] = {}
    layer_models: dict[str, Any] = {}  # text jobs: each teacher's model (layers and width)
    with torch.no_grad():
        for index, teacher in enumerate(spec.teachers):
            tasks = [spec.task(name) for name in teacher.tasks]
            with _blame(f"body.teachers[{index}].source"):
                if teacher.source.train is not None:
                    model = build_model(teacher.source.train.arch, input_shape=data.input_shape, tasks=tasks,
                                        layout=data.layout if teacher.source.train.dataset is None
                                        else None, text=data.text).eval()
                    _check_outputs(model(batch), tasks, where=f"teachers[{teacher.name}]")
                    teacher_params[teacher.name] = count_params(model)
                    layer_models[teacher.name] = model
                    continue
                built = build_teacher(spec, teacher, trained=None, input_shape=data.input_shape,
                                      rows=precomputed_rows(data), resolver=resolver,
                                      allow_torchscript=allow_torchscript, layout=data.layout,
                                      text=data.text)
                if not isinstance(built, PrecomputedTeacher):  # precomputed outputs are checked when loaded
                    _check_outputs(built.outputs(batch).logits, tasks, where=f"teachers[{teacher.name}]")
                teacher_params[teacher.name] = getattr(built, "params", None)
        with _blame("body.student"):
            student = build_model(spec.student, input_shape=data.input_shape, tasks=list(spec.tasks),
                                  layout=data.layout, text=data.text).eval()
            _check_outputs(student(batch), spec.tasks, where="student")
    student_params = count_params(student)
    known = [p for p in teacher_params.values() if p is not None]
    stages = []
    for plan in plan_stages(spec, rows=rows):
        seen = (rows["train"] + transfer_rows if plan.reads_teachers  # transfer rows: student only
                else rows["labelled"] if plan.dataset is None  # baseline, job-dataset teachers
                else round(BUILTIN_DATASETS[plan.dataset]["n_train"]  # a source domain's train
                           * (1 - spec.dataset.validation_fraction)))
        per_epoch = plan.epoch_steps or steps_per_epoch(seen, plan.batch_size)
        stages.append({"name": plan.name, "epochs": plan.epochs, "batch_size": plan.batch_size,
                       "steps_per_epoch": per_epoch, "steps": plan.epochs * per_epoch})
    cached_rows = rows["train"] + rows["validation"] + rows["test"] + transfer_rows
    out_width = sum(output_size(task) for task in spec.tasks)
    return {
        "dataset": {"input_shape": list(data.input_shape), "train_rows": rows["train"],
                    "layout": None if data.layout is None else data.layout.as_json(),
                    "validation_rows": rows["validation"], "test_rows": rows["test"],
                    "labelled_rows": rows["labelled"], "notes": list(data.notes)},
        "params": {"student": student_params, "teachers": teacher_params, "teacher": sum(known) if known else None},
        "compression_ratio": round(sum(known) / student_params, 2) if known else None,
        "stages": stages,
        "teacher_cache_bytes_estimate": cached_rows * out_width * FLOAT_BYTES * len(spec.teachers),
        # text jobs: the tokenizer, and why hidden states run online (their would-be cache size)
        **({"text": text_summary(spec, data, teachers=layer_models)} if data.text is not None else {}),
    }


def _load(spec: JobSpec, *, resolver: FileResolver, cache_builtin: bool) -> DatasetSplits:
    if is_text_job(spec):  # tokenised as a job would; tokens cached under the temp directory
        return load_text_data(spec, resolver=resolver, cache_dir=DRY_RUN_CACHE)
    if spec.training.data_placement == "disk":  # read in chunks as the job will, never whole
        return load_disk_data(spec.dataset, tasks=list(spec.tasks), seed=spec.training.seed,
                              resolver=resolver, device=torch.device("cpu"),
                              directory=DRY_RUN_CACHE / "rows")
    if not cache_builtin or spec.dataset.builtin is None:
        return load_dataset(spec.dataset, tasks=list(spec.tasks), resolver=resolver)
    key = (spec.dataset.builtin, spec.dataset.encoding, tuple(task.name for task in spec.tasks))
    if key not in _BUILTIN_CACHE:
        _BUILTIN_CACHE[key] = load_dataset(spec.dataset, tasks=list(spec.tasks), resolver=resolver)
    return _BUILTIN_CACHE[key]


def _check_outputs(logits: dict[str, torch.Tensor], tasks: Any, *, where: str) -> None:
    for task in tasks:
        got = logits.get(task.name)
        if got is None:
            raise TrainingError(code="teacher_mismatch", message=f"{where}: gives no output for task '{task.name}'")
        if got.shape[-1] != output_size(task):
            raise TrainingError(code="teacher_mismatch", message=(
                f"{where}: output for '{task.name}' has width {got.shape[-1]}, the task needs {output_size(task)}"))
