"""What the student learns from: teachers built from their sources, run once (or read from the
output cache) over the train, validation, test and transfer inputs, put in the student's units and
combined per task into one ensemble target.

The same two functions serve the cached and the online path: `standardised` (a file teacher's
regression outputs, in the target's original units, become standardised like the student's) and
`ensemble`, so both paths train on the same numbers.

Ensembles (Hinton et al. 2015) average probabilities, not logits: for a task covered by teachers
i with weights w_i (normalised), at the task's temperature T,
    multiclass           p = sum_i w_i softmax(z_i / T)        target logits T * log p
    binary, multilabel   q = sum_i w_i sigmoid(z_i / T)        target logits T * logit(q)
    regression           y = sum_i w_i y_i (standardised)
The target logits give back p (or q) exactly at temperature T, so the KD losses and the teacher
metrics read an ensemble like a single teacher. A task with one teacher keeps its tensor as it is.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from app.training.cache import TeacherOutputCache, cache_key, tensor_sha256
from app.training.datasets.registry import generate_transfer_set
from app.training.datasets.splits import DatasetSplits, TableLayout
from app.training.datasets.text_inputs import TextInputs
from app.training.errors import TrainingError
from app.training.files import FileResolver
from app.training.spec import JobSpec, TeacherSpec
from app.training.target_scaling import TargetScale, standardise_targets
from app.training.teacher_outputs import probability_warning
from app.training.teachers import (ModelTeacher, OnnxTeacher, PrecomputedTeacher, TeacherOutputs,
                                   TorchScriptTeacher, load_weights_teacher)

Tensors = dict[str, torch.Tensor]
PROBABILITY_FLOOR = 1e-12  # keeps log p finite where an ensemble gives a class no mass at all


class Teacher(Protocol):
    """What every teacher source provides (PrecomputedTeacher has splits instead of outputs)."""

    params: int | None
    identity: str | None

    def outputs(self, x: torch.Tensor) -> TeacherOutputs: ...


@dataclass
class SoftTargets:
    """Teacher targets for rows: the ensemble's logits per task and each teacher's features."""

    logits: Tensors  # task -> (n, out)
    features: Tensors  # teacher name -> (n, width)

    def rows(self, index: torch.Tensor) -> "SoftTargets":
        """Return the targets of the given rows."""
        return SoftTargets(logits={task: z[index] for task, z in self.logits.items()},
                           features={name: f[index] for name, f in self.features.items()})


@dataclass
class TeacherTargets:
    """The teachers of a job and their targets on every split."""

    teachers: list[Teacher | PrecomputedTeacher]
    soft: dict[str, SoftTargets]  # split -> targets; train/transfer on the CPU, val/test on device
    cache_status: dict[str, str]  # teacher -> hit | miss | precomputed
    notes: list[str] = field(default_factory=list)  # outputs that look like probabilities


def build_teacher(spec: JobSpec, teacher: TeacherSpec, *, trained: nn.Module | None,
                  input_shape: Sequence[int], rows: dict[str, int], resolver: FileResolver,
                  allow_torchscript: bool, layout: TableLayout | None = None,
                  text: TextInputs | None = None) -> Teacher | PrecomputedTeacher:
    """Return the teacher object of a spec teacher (`trained`: its model from a train stage;
    `layout`: the job's table layout, which zoo teachers embed)."""
    tasks = [spec.task(name) for name in teacher.tasks]
    source = teacher.source
    if source.train is not None:
        assert trained is not None
        return ModelTeacher(trained, arch=source.train.arch, tasks=tasks)
    if source.weights is not None:
        return load_weights_teacher(source.weights, tasks=tasks, input_shape=input_shape,
                                    resolver=resolver, name=teacher.name, layout=layout, text=text)
    if source.onnx is not None:
        return OnnxTeacher(source.onnx, tasks=tasks, resolver=resolver, name=teacher.name)
    if source.torchscript is not None:
        return TorchScriptTeacher(source.torchscript, tasks=tasks, resolver=resolver,
                                  name=teacher.name, allowed=allow_torchscript)
    assert source.outputs is not None
    return PrecomputedTeacher(source.outputs, tasks=tasks, rows=rows, resolver=resolver,
                              name=teacher.name)


def teacher_targets(spec: JobSpec, *, data: DatasetSplits, transfer_x: torch.Tensor | None,
                    trained: dict[str, nn.Module], scales: dict[str, TargetScale],
                    resolver: FileResolver, allow_torchscript: bool, cache: TeacherOutputCache,
                    device: torch.device) -> TeacherTargets:
    """Build every teacher, get its outputs on every split (cache or forward), standardise and
    combine them per task; train/transfer targets stay on the CPU until a stage places them."""
    assert data.x_val is not None
    splits = {"train": data.x_train, "val": data.x_val, "test": data.x_test}
    if transfer_x is not None:
        splits["transfer"] = transfer_x
    teachers, per_teacher, status, notes = [], [], {}, []
    for spec_teacher in spec.teachers:
        built = build_teacher(spec, spec_teacher, trained=trained.get(f"teacher:{spec_teacher.name}"),
                              input_shape=data.input_shape, rows=precomputed_rows(data),
                              resolver=resolver, allow_torchscript=allow_torchscript,
                              layout=data.layout, text=data.text)
        outputs, hit = split_outputs(built, splits, cache=cache, carved=data.carved)
        status[spec_teacher.name] = ("precomputed" if isinstance(built, PrecomputedTeacher)
                                     else "hit" if hit else "miss")
        source = spec_teacher.source
        if source.outputs_are == "logits":  # a file teacher that says it gives logits
            warning = probability_warning(spec_teacher.name, outputs["train"],
                                          [spec.task(name) for name in spec_teacher.tasks],
                                          kind=source.kind)
            notes += [warning] if warning else []
        teachers.append(built)
        per_teacher.append({split: standardised(spec_teacher, out, scales)
                            for split, out in outputs.items()})
    soft = {split: ensemble(spec, [outputs[split] for outputs in per_teacher],
                            device=device if split in ("val", "test") else torch.device("cpu"))
            for split in splits}
    return TeacherTargets(teachers=teachers, soft=soft, cache_status=status, notes=notes)


def online_targets(spec: JobSpec, teachers: Sequence[Teacher], x: torch.Tensor,
                   scales: dict[str, TargetScale]) -> SoftTargets:
    """Run every teacher on this batch and combine them exactly as the cached path does."""
    return ensemble(spec, [standardised(spec_teacher, teacher.outputs(x), scales)
                           for spec_teacher, teacher in zip(spec.teachers, teachers, strict=True)])


def standardised(teacher: TeacherSpec, outputs: TeacherOutputs,
                 scales: dict[str, TargetScale]) -> TeacherOutputs:
    """Return the outputs in the student's units: a teacher not trained in this job answers
    regression tasks in the target's original units, which the student sees standardised."""
    if teacher.source.train is not None:  # trained here, on standardised targets
        return outputs
    return TeacherOutputs(logits=standardise_targets(outputs.logits, scales),
                          features=outputs.features)


def ensemble(spec: JobSpec, outputs: Sequence[TeacherOutputs], *,
             device: torch.device | None = None) -> SoftTargets:
    """Combine the teachers of each task (see the module docstring); keep each teacher's features.

    A task with one teacher keeps that teacher's tensor as it is (no copy: a memory-mapped cache
    entry stays mapped); `device` None leaves the tensors where they are.
    """
    def placed(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if device is None else tensor.to(device)

    logits = {}
    for task in spec.tasks:
        mine = [(teacher.weight, out.logits[task.name])
                for teacher, out in zip(spec.teachers, outputs) if task.name in teacher.tasks]
        if len(mine) == 1:
            logits[task.name] = placed(mine[0][1])
        elif mine:
            temperature, _ = spec.kd_settings(task.name)
            total = sum(weight for weight, _ in mine)
            stacked = torch.stack([placed(z).float() for _, z in mine])  # (teachers, n, out)
            weights = torch.tensor([w / total for w, _ in mine], device=stacked.device)
            weights = weights.view(-1, *[1] * (stacked.dim() - 1))  # (teachers, 1, 1)
            logits[task.name] = _mixture_logits(task.kind, stacked, weights, temperature)
    features = {teacher.name: placed(out.features)
                for teacher, out in zip(spec.teachers, outputs) if out.features is not None}
    return SoftTargets(logits=logits, features=features)


def _mixture_logits(kind: str, stacked: torch.Tensor, weights: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Return logits whose tempered softmax/sigmoid is the weighted mixture of the teachers'."""
    if kind == "multiclass":
        mixture = (weights * torch.softmax(stacked / temperature, dim=-1)).sum(dim=0)  # (n, out)
        return temperature * mixture.clamp_min(PROBABILITY_FLOOR).log()
    if kind in ("binary", "multilabel"):
        mixture = (weights * torch.sigmoid(stacked / temperature)).sum(dim=0)  # (n, out)
        return temperature * mixture.clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR).logit()
    return (weights * stacked).sum(dim=0)  # regression: standardised predictions


def precomputed_rows(data: DatasetSplits) -> dict[str, int]:
    """Rows a precomputed teacher's NPZ holds per split: aligned with the dataset's own splits
    (train before the validation carve; a 'val' split only where the data named its own)."""
    assert data.x_val is not None
    if data.carved is not None:
        return {"train": len(data.carved), "test": len(data.x_test)}
    return {"train": len(data.x_train), "val": len(data.x_val), "test": len(data.x_test)}


def split_outputs(teacher: Teacher | PrecomputedTeacher, splits: dict[str, torch.Tensor], *,
                  cache: TeacherOutputCache,
                  carved: torch.Tensor | None = None) -> tuple[dict[str, TeacherOutputs], bool]:
    """Return the teacher's outputs per split and whether they came from the cache."""
    if isinstance(teacher, PrecomputedTeacher):
        given = dict(teacher.splits)
        if carved is not None:  # the NPZ's train rows include the carved validation rows
            given["val"], given["train"] = given["train"].rows(carved), given["train"].rows(~carved)
        return {split: given[split] for split in splits}, False
    assert teacher.identity is not None
    key = cache_key(teacher_identity=teacher.identity,
                    inputs_sha256={split: tensor_sha256(x) for split, x in splits.items()})
    stored = cache.get(key)
    if stored is not None:
        outputs = {split: TeacherOutputs.from_tensors(
            {name.removeprefix(f"{split}/"): t for name, t in stored.items()
             if name.startswith(f"{split}/")}) for split in splits}
        return outputs, True
    outputs = {split: _outputs_on_model_device(teacher, x) for split, x in splits.items()}
    cache.put(key, {f"{split}/{name}": t for split, out in outputs.items()
                    for name, t in out.as_tensors().items()})
    return outputs, False


def _outputs_on_model_device(teacher: Teacher, x: torch.Tensor, *,
                             chunk: int = 1 << 16) -> TeacherOutputs:
    """Run the teacher over x; CPU rows of a streamed job go to a device model chunk by chunk
    and the outputs come back to x's device, so the split never has to fit on the device at once."""
    model = getattr(teacher, "model", None)
    parameter = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if parameter is None or parameter.device == x.device:
        return teacher.outputs(x)
    parts = [teacher.outputs(x[start:start + chunk].to(parameter.device))
             for start in range(0, len(x), chunk)]
    return TeacherOutputs(
        logits={task: torch.cat([p.logits[task].to(x.device) for p in parts]) for task in parts[0].logits},
        features=None if parts[0].features is None else torch.cat([p.features.to(x.device) for p in parts]))


def load_transfer_inputs(spec: JobSpec, *, input_shape: Sequence[int], resolver: FileResolver,
                         cache_dir: Path, layout: TableLayout | None = None) -> torch.Tensor | None:
    """Return the unlabelled transfer inputs (n, *input_shape), or None without a transfer set.

    Under a table layout (embedding encoding) each categorical column of a file's `x` must hold
    the dataset's own codes: whole numbers in 0..cardinality-1 (0 the unknown bucket)."""
    transfer = spec.transfer_set
    if transfer is None:
        return None
    if transfer.generate is not None:
        return generate_transfer_set(spec.dataset.builtin, transfer.generate, spec.training.seed,
                                     cache_dir=cache_dir / "transfer-inputs")
    assert transfer.file is not None
    return read_transfer_file(transfer.file, input_shape=input_shape, resolver=resolver, layout=layout)


def read_transfer_file(file: str, *, input_shape: Sequence[int], resolver: FileResolver,
                       layout: TableLayout | None) -> torch.Tensor:
    """Return an uploaded transfer set's `x` (n, *input_shape), checked (module rules above)."""
    path = resolver.resolve(file)
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = npz["x"]
    except (ValueError, OSError, KeyError) as error:
        raise TrainingError(code="invalid_data", message=(
            f"transfer_set.file: '{file}' must be an NPZ (no pickles) with an array "
            f"'x': {error}")) from None
    if list(x.shape[1:]) != list(input_shape) or len(x) == 0:
        raise TrainingError(code="invalid_data", message=(
            f"transfer_set.file: 'x' has shape {list(x.shape)}, expected [n, "
            f"{', '.join(map(str, input_shape))}]"))
    tensor = torch.from_numpy(x.astype(np.float32))
    if not torch.isfinite(tensor).all():
        raise TrainingError(code="invalid_data", message="transfer_set.file: 'x' has NaN or inf")
    if layout is not None:
        check_codes(tensor, layout)
    return tensor


def check_codes(x: torch.Tensor, layout: TableLayout) -> None:
    """Refuse category codes an embedding table cannot look up, naming the first bad column."""
    for index, size in enumerate(layout.cardinalities):
        codes = x[:, layout.numeric + index]
        bad = (codes != codes.round()) | (codes < 0) | (codes >= size)
        if bad.any():
            name = layout.names[index] if index < len(layout.names) else f"categorical {index}"
            raise TrainingError(code="invalid_data", message=(
                f"transfer_set.file: column {layout.numeric + index} of 'x' ({name}) holds "
                f"{codes[bad][0].item():g} (row {int(bad.nonzero()[0, 0])}); codes of this column "
                f"are whole numbers 0..{size - 1} (0 = a category unknown to train), as "
                "docs/spec.md's input contract says"))
