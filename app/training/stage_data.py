"""The rows each stage trains and is evaluated on: the job's data with its validation split, the
label subset, and the training rows of teacher, student and baseline stages.

Train rows stay on the CPU (batching.py places them); the validation and test splits go to the
training device once, since validation is evaluated every few epochs and test once at the end.
"""

import dataclasses
from dataclasses import dataclass

import torch

from app.training.catalog import AUGMENT_INPUT_RANKS, EMBEDDING_ARCHS
from app.training.datasets.registry import load_dataset
from app.training.datasets.splits import DatasetSplits, TableLayout, with_validation
from app.training.datasets.text_inputs import TextInputs
from app.training.errors import TrainingError
from app.training.files import FileResolver
from app.training.spec import DatasetSpec, JobSpec, TaskSpec, input_rank_problem
from app.training.target_scaling import TargetScale, fit_target_scales, standardise_targets
from app.training.teacher_targets import SoftTargets

Tensors = dict[str, torch.Tensor]


@dataclass
class StageData:
    """The rows a stage trains on (CPU) and its validation split (device)."""

    x: torch.Tensor  # (n, *input_shape)
    targets: Tensors  # task -> (n, ...), regression standardised
    labelled: torch.Tensor | None  # (n,) bool; None: all rows labelled
    soft: SoftTargets | None  # teacher targets of the n rows (cached path)
    x_val: torch.Tensor  # (n_val, *input_shape)
    y_val: Tensors  # original units
    scales: dict[str, TargetScale]
    layout: TableLayout | None = None  # a table's numbers and category codes (models embed them)
    text: TextInputs | None = None  # tokenised text: the tokenizer and backbones models load


def stratify_task(tasks: list[TaskSpec] | tuple[TaskSpec, ...]) -> str | None:
    """Return the task whose classes the validation split keeps in proportion: the first
    multiclass or binary task, as the built-in and uploaded test splits do; None: no such task."""
    return next((task.name for task in tasks if task.kind in ("multiclass", "binary")), None)


def load_job_data(spec: DatasetSpec, *, tasks: list[TaskSpec], seed: int,
                  resolver: FileResolver | None, device: torch.device,
                  loaded: DatasetSplits | None = None) -> DatasetSplits:
    """Load a dataset, carve its validation rows out of train (a seeded, stratified
    `validation_fraction`, unless the data names its own), and put validation and test on `device`.

    `loaded`: the rows already read (a text job's tokenised rows, text.load_text_data)."""
    data = loaded if loaded is not None else load_dataset(spec, tasks=tasks, resolver=resolver)
    data = with_validation(data, fraction=spec.validation_fraction, seed=seed,
                           stratify_by=stratify_task(tasks))
    assert data.x_val is not None and data.y_val is not None
    return dataclasses.replace(data, x_test=data.x_test.to(device), x_val=data.x_val.to(device),
                               y_test={task: y.to(device) for task, y in data.y_test.items()},
                               y_val={task: y.to(device) for task, y in data.y_val.items()})


def check_input_ranks(spec: JobSpec, input_shape: tuple[int, ...],
                      layout: TableLayout | None = None) -> None:
    """An uploaded dataset's shape is known only now: check every zoo architecture and the
    augmentation accept it, and that category codes (`layout`) reach only architectures that
    embed them (before any teacher trains)."""
    archs = [("student", spec.student)] + [
        (f"teachers[{i}]", t.source.train.arch if t.source.train else t.source.weights.arch)
        for i, t in enumerate(spec.teachers) if t.source.train or t.source.weights]
    for where, arch in archs:
        problem = input_rank_problem(arch, input_shape)
        if layout is not None and arch.type not in EMBEDDING_ARCHS:
            raise TrainingError(code="invalid_data", message=(
                f"{where}: {arch.type} cannot read a table's category codes (dataset.encoding "
                f"'embedding'); use {', '.join(EMBEDDING_ARCHS)}, or set dataset.encoding to 'onehot'"))
        if problem:
            raise TrainingError(code="invalid_data", message=(
                f"{where}: {problem}; the dataset's inputs have shape {list(input_shape)}"))
    if spec.training.augment is not None and len(input_shape) not in AUGMENT_INPUT_RANKS:
        raise TrainingError(code="invalid_data", message=(
            f"training.augment: crops and flips need image inputs (H, W) or (C, H, W); the "
            f"dataset's inputs have shape {list(input_shape)}"))


def label_mask(spec: JobSpec, n_rows: int) -> torch.Tensor | None:
    """Return which training rows keep their labels (a fixed seeded subset), None for all."""
    fraction = spec.distillation.label_fraction
    if fraction >= 1:
        return None
    keep = torch.randperm(n_rows, generator=torch.Generator().manual_seed(spec.training.seed))
    mask = torch.zeros(n_rows, dtype=torch.bool)
    mask[keep[:round(fraction * n_rows)]] = True
    return mask


def labelled_rows(data: DatasetSplits, labelled: torch.Tensor | None) -> tuple[torch.Tensor, Tensors]:
    """Return (x, y) of the training rows whose labels the job may use."""
    if labelled is None:
        return data.x_train, data.y_train
    return data.x_train[labelled], {task: y[labelled] for task, y in data.y_train.items()}


def teacher_data(*, tasks: tuple[TaskSpec, ...], source_dataset: str | None, data: DatasetSplits,
                 labelled: torch.Tensor | None, scales: dict[str, TargetScale], seed: int,
                 device: torch.device) -> StageData:
    """An in-job teacher's rows: the job's labelled rows, or every row of its source domain
    (another dataset, with its own validation split and target scales)."""
    names = [task.name for task in tasks]
    if source_dataset is not None:
        data = load_job_data(DatasetSpec(builtin=source_dataset), tasks=list(tasks), seed=seed,
                             resolver=None, device=device)
        scales, labelled = fit_target_scales(data.y_train, tasks), None
    x, y = labelled_rows(data, labelled)
    assert data.x_val is not None and data.y_val is not None
    return StageData(x=x, targets=standardise_targets({name: y[name] for name in names}, scales),
                     labelled=None, soft=None, x_val=data.x_val,
                     y_val={name: data.y_val[name] for name in names}, scales=scales,
                     layout=data.layout, text=data.text)


def baseline_data(data: DatasetSplits, *, labelled: torch.Tensor | None,
                  scales: dict[str, TargetScale]) -> StageData:
    """The no-KD baseline's rows: the labelled training rows only (it has nothing else to learn
    from; its step budget is the student's, see strategies.plan_stages)."""
    x, y = labelled_rows(data, labelled)
    assert data.x_val is not None and data.y_val is not None
    return StageData(x=x, targets=standardise_targets(y, scales), labelled=None, soft=None,
                     x_val=data.x_val, y_val=data.y_val, scales=scales, layout=data.layout,
                     text=data.text)


def student_data(data: DatasetSplits, *, transfer_x: torch.Tensor | None,
                 labelled: torch.Tensor | None, soft: dict[str, SoftTargets],
                 scales: dict[str, TargetScale], features: bool) -> StageData:
    """Training rows followed by the unlabelled transfer rows, with the teachers' targets.

    Teacher features are joined only when a stage reads them (`features`): for the 50k MNIST-1D
    transfer set that is a (51k, 128) float32 copy, and unread mapped cache pages stay on disk.
    """
    assert data.x_val is not None and data.y_val is not None
    targets = standardise_targets(data.y_train, scales)
    train_soft = soft["train"]
    if transfer_x is None:
        return StageData(x=data.x_train, targets=targets, labelled=labelled, soft=train_soft,
                         x_val=data.x_val, y_val=data.y_val, scales=scales, layout=data.layout,
                         text=data.text)
    n_train, n_extra = len(data.x_train), len(transfer_x)
    mask = labelled if labelled is not None else torch.ones(n_train, dtype=torch.bool)
    extra = soft["transfer"]
    return StageData(
        x=torch.cat([data.x_train, transfer_x]),
        targets={task: torch.cat([y, y.new_zeros((n_extra, *y.shape[1:]))])  # unused: unlabelled
                 for task, y in targets.items()},
        labelled=torch.cat([mask, mask.new_zeros(n_extra)]),
        soft=SoftTargets(logits={t: torch.cat([z, extra.logits[t]]) for t, z in train_soft.logits.items()},
                         features={n: torch.cat([f, extra.features[n]])
                                   for n, f in train_soft.features.items()} if features else {}),
        x_val=data.x_val, y_val=data.y_val, scales=scales, layout=data.layout)
