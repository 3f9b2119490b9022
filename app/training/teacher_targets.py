"""What the student learns from: teachers built from their sources, run once (or read from the
output cache) over the training, test and transfer inputs, and averaged per task.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from app.training.cache import TeacherOutputCache, cache_key, tensor_sha256
from app.training.datasets.registry import generate_transfer_set
from app.training.errors import TrainingError
from app.training.spec import JobSpec, TeacherSpec
from app.training.teachers import (FileResolver, ModelTeacher, OnnxTeacher, PrecomputedTeacher,
                                   TeacherOutputs, TorchScriptTeacher, load_weights_teacher)

Tensors = dict[str, torch.Tensor]


class Teacher(Protocol):
    """What every teacher source provides (PrecomputedTeacher has splits instead of outputs)."""

    params: int | None
    identity: str | None

    def outputs(self, x: torch.Tensor) -> TeacherOutputs: ...


@dataclass
class SoftTargets:
    """Teacher targets for rows: averaged logits per task and each teacher's features."""

    logits: Tensors  # task -> (n, out), mean over the teachers of the task
    features: Tensors  # teacher name -> (n, width)

    def rows(self, index: torch.Tensor) -> "SoftTargets":
        """Return the targets of the given rows."""
        return SoftTargets(logits={task: z[index] for task, z in self.logits.items()},
                           features={name: f[index] for name, f in self.features.items()})


def build_teacher(spec: JobSpec, teacher: TeacherSpec, *, trained: nn.Module | None,
                  input_shape: Sequence[int], rows: dict[str, int],
                  resolver: FileResolver) -> Teacher | PrecomputedTeacher:
    """Return the teacher object of a spec teacher (`trained`: its model from a train stage)."""
    tasks = [spec.task(name) for name in teacher.tasks]
    source = teacher.source
    if source.train is not None:
        assert trained is not None
        return ModelTeacher(trained, arch=source.train.arch, tasks=tasks)
    if source.weights is not None:
        return load_weights_teacher(source.weights, tasks=tasks, input_shape=input_shape,
                                    resolver=resolver, name=teacher.name)
    if source.onnx is not None:
        return OnnxTeacher(source.onnx, tasks=tasks, resolver=resolver, name=teacher.name)
    if source.torchscript is not None:
        return TorchScriptTeacher(source.torchscript, tasks=tasks, resolver=resolver, name=teacher.name,
                                  allowed=getattr(resolver, "allow_torchscript", False))
    assert source.outputs is not None
    return PrecomputedTeacher(source.outputs, tasks=tasks, rows=rows, resolver=resolver,
                              name=teacher.name)


def split_outputs(teacher: Teacher | PrecomputedTeacher, splits: dict[str, torch.Tensor], *,
                  cache: TeacherOutputCache) -> tuple[dict[str, TeacherOutputs], bool]:
    """Return the teacher's outputs per split and whether they came from the cache."""
    if isinstance(teacher, PrecomputedTeacher):
        return {split: teacher.splits[split] for split in splits}, False
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
    and the outputs come back to the CPU, so the split never has to fit on the device at once."""
    model = getattr(teacher, "model", None)
    parameter = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if parameter is None or parameter.device == x.device:
        return teacher.outputs(x)
    parts = [teacher.outputs(x[start:start + chunk].to(parameter.device))
             for start in range(0, len(x), chunk)]
    return TeacherOutputs(
        logits={task: torch.cat([p.logits[task].to(x.device) for p in parts]) for task in parts[0].logits},
        features=None if parts[0].features is None else torch.cat([p.features.to(x.device) for p in parts]))


def average_targets(spec: JobSpec, outputs: Sequence[TeacherOutputs], *,
                    device: torch.device | None = None) -> SoftTargets:
    """Average the logits of the teachers sharing a task; keep each teacher's features.

    A task with one teacher keeps that teacher's tensor as it is (no stack, no copy: a
    memory-mapped cache entry stays mapped); `device` None leaves the tensors where they are.
    """
    def placed(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if device is None else tensor.to(device)

    logits = {}
    for task in spec.tasks:
        mine = [out.logits[task.name] for teacher, out in zip(spec.teachers, outputs)
                if task.name in teacher.tasks]
        if len(mine) == 1:
            logits[task.name] = placed(mine[0])
        elif mine:
            logits[task.name] = placed(torch.stack(mine).mean(dim=0))  # (n, out)
    features = {teacher.name: placed(out.features)
                for teacher, out in zip(spec.teachers, outputs) if out.features is not None}
    return SoftTargets(logits=logits, features=features)


def load_transfer_inputs(spec: JobSpec, *, input_shape: Sequence[int], resolver: FileResolver,
                         cache_dir: Path) -> torch.Tensor | None:
    """Return the unlabelled transfer inputs (n, *input_shape), or None without a transfer set."""
    transfer = spec.transfer_set
    if transfer is None:
        return None
    if transfer.generate is not None:
        return generate_transfer_set(spec.dataset.builtin, transfer.generate, spec.training.seed,
                                     cache_dir=cache_dir / "transfer-inputs")
    assert transfer.file is not None
    path = resolver.resolve(transfer.file)
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = npz["x"]
    except (ValueError, OSError, KeyError) as error:
        raise TrainingError(code="invalid_data", message=(
            f"transfer_set.file: '{transfer.file}' must be an NPZ (no pickles) with an array "
            f"'x': {error}")) from None
    if list(x.shape[1:]) != list(input_shape) or len(x) == 0:
        raise TrainingError(code="invalid_data", message=(
            f"transfer_set.file: 'x' has shape {list(x.shape)}, expected [n, "
            f"{', '.join(map(str, input_shape))}]"))
    tensor = torch.from_numpy(x.astype(np.float32))
    if not torch.isfinite(tensor).all():
        raise TrainingError(code="invalid_data", message="transfer_set.file: 'x' has NaN or inf")
    return tensor
