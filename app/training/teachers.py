"""Teacher sources: zoo models (trained in the job or loaded from safetensors), ONNX, TorchScript
(only where the caller allows it: loading one runs its code), precomputed.

Every teacher answers `outputs(x) -> TeacherOutputs` (logits per task, optional trunk features)
and names an `identity` for the output cache: everything that shapes its outputs (content hash,
output settings, architecture, tasks), never a file path. File teachers may declare their outputs
as probabilities; they become logits as soon as they are read. Files are found through a
FileResolver (files.py).
"""

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.training.cache import tensor_sha256
from app.training.archs_text import load_text_weights
from app.training.datasets.splits import TableLayout
from app.training.datasets.text_inputs import TextInputs
from app.training.errors import TrainingError
from app.training.files import FileResolver
from app.training.models import build_model, count_params, output_size
from app.training.tabular import model_layout
from app.training.spec import (ArchSpec, OnnxSourceSpec, OutputsSourceSpec, TaskSpec, TorchScriptSourceSpec,
                               WeightsSourceSpec)
from app.training.teacher_outputs import TeacherOutputs, as_logits

Tensors = dict[str, torch.Tensor]
PREDICT_BATCH = 4096


def teacher_identity(*, kind: str, content_sha256: str, settings: dict[str, Any],
                     tasks: Sequence[TaskSpec]) -> str:
    """Return the canonical JSON naming a teacher's outputs for the cache.

    `settings` are the source's output-shaping fields without its file reference (a path or an
    upload id is not content: the same bytes under another name give the same outputs); the
    tasks go in teacher order, since a concatenated output is split in that order.
    """
    return json.dumps({"kind": kind, "content": content_sha256, "settings": settings,
                       "tasks": [[t.name, t.kind, t.num_classes] for t in tasks]},
                      sort_keys=True, separators=(",", ":"))


def _file_sha256(path: Path) -> str:
    """Return the sha256 of a file's bytes, read in 1 MiB blocks (teacher files can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelTeacher:
    """A zoo model teacher (trained in the job or loaded from safetensors) of `arch` over `tasks`."""

    def __init__(self, model: nn.Module, *, arch: ArchSpec, tasks: Sequence[TaskSpec]) -> None:
        self.model = model.eval()
        self.params: int | None = count_params(model)
        # A table layout shapes the model (which columns it embeds): it is part of what names the
        # outputs. It is read off the model: a source-domain teacher embeds its own dataset's.
        settings: dict[str, Any] = {"arch": arch.model_dump(mode="json")}
        layout = model_layout(model)
        if layout is not None:
            settings["layout"] = layout.as_json()
        self.identity = teacher_identity(
            kind="zoo", content_sha256=tensor_sha256(*model.state_dict().values()),
            settings=settings, tasks=tasks)

    @torch.no_grad()
    def outputs(self, x: torch.Tensor) -> TeacherOutputs:
        """Run the model over x in batches; features come from the trunk tap."""
        logits, features = [], []
        for start in range(0, len(x), PREDICT_BATCH):
            chunk_logits, taps = self.model.forward_features(x[start:start + PREDICT_BATCH])
            logits.append({task: z.float() for task, z in chunk_logits.items()})
            features.append(taps["trunk"].flatten(1).float())  # (batch, width)
        return TeacherOutputs(logits={task: torch.cat([c[task] for c in logits]) for task in logits[0]},
                              features=torch.cat(features))


def load_weights_teacher(source: WeightsSourceSpec, *, tasks: Sequence[TaskSpec],
                         input_shape: Sequence[int], resolver: FileResolver,
                         name: str, layout: TableLayout | None = None,
                         text: TextInputs | None = None) -> ModelTeacher:
    """Build the zoo architecture (embedding a table's codes with `layout`) and load its
    safetensors weights (never pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = resolver.resolve(source.file)
    model = build_model(source.arch, input_shape=input_shape, tasks=tasks, layout=layout, text=text)
    try:
        if source.arch.type == "transformer":  # a backbone's task heads alone, or everything
            load_text_weights(model, load_file(str(path)))
        else:
            model.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError) as error:
        raise TrainingError(code="teacher_mismatch", message=(
            f"teacher '{name}': weights in '{source.file}' do not fit the declared architecture "
            f"and tasks: {str(error).splitlines()[0][:300]}")) from None
    return ModelTeacher(model, arch=source.arch, tasks=tasks)


def _outputs_in_batches(x: torch.Tensor, tasks: Sequence[TaskSpec],
                        run: Callable[[torch.Tensor], tuple[Tensors, torch.Tensor | None]], *,
                        outputs_are: str) -> TeacherOutputs:
    """Run a file teacher over x in CPU float batches; `run(chunk)` returns (outputs per task,
    features or None) of one batch; the joined outputs, as logits, come back on x's device."""
    logits: list[Tensors] = []
    features: list[torch.Tensor] = []
    for start in range(0, len(x), PREDICT_BATCH):
        per_task, feature = run(x[start:start + PREDICT_BATCH].detach().cpu().float())
        logits.append(per_task)
        if feature is not None:
            features.append(feature)
    joined = as_logits({t.name: torch.cat([c[t.name] for c in logits]) for t in tasks}, tasks, outputs_are)
    return TeacherOutputs(logits={k: v.to(x.device) for k, v in joined.items()},
                          features=torch.cat(features).to(x.device) if features else None)


def _split_by_task(values: list[torch.Tensor], tasks: Sequence[TaskSpec], *, concatenated: bool,
                   teacher: str, kind: str) -> Tensors:
    """Return {task: (batch, width)} from one output per task, or from one concatenated output
    split by the tasks' widths in declared order; a width that does not match is a teacher_mismatch."""
    sizes = [output_size(task) for task in tasks]
    if concatenated:
        if values[0].shape[1] != sum(sizes):
            raise TrainingError(code="teacher_mismatch", message=(
                f"teacher '{teacher}': concatenated {kind} output has width "
                f"{values[0].shape[1]}, its tasks need {sum(sizes)} ({sizes})"))
        values = list(values[0].split(sizes, dim=1))
    for task, size, value in zip(tasks, sizes, values):
        if value.shape[1] != size:
            raise TrainingError(code="teacher_mismatch", message=(
                f"teacher '{teacher}': {kind} output '{task.name}' has width "
                f"{value.shape[1]}, task needs {size}"))
    return {task.name: value for task, value in zip(tasks, values)}


class OnnxTeacher:
    """An ONNX model run with onnxruntime on the CPU."""

    def __init__(self, source: OnnxSourceSpec, *, tasks: Sequence[TaskSpec], resolver: FileResolver,
                 name: str) -> None:
        import onnx
        import onnxruntime as ort

        path = resolver.resolve(source.file)
        self.source, self.tasks, self.name = source, list(tasks), name
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as error:  # onnxruntime raises its own types for a bad file
            raise TrainingError(code="teacher_mismatch", message=(
                f"teacher '{name}': '{source.file}' is not a readable ONNX model: "
                f"{str(error).splitlines()[0][:300]}")) from None
        self.params = int(sum(np.prod(init.dims) for init in graph.initializer))
        self.identity = teacher_identity(kind="onnx", content_sha256=_file_sha256(path),
                                         settings=source.model_dump(mode="json", exclude={"file"}),
                                         tasks=self.tasks)
        self.input_name = self.session.get_inputs()[0].name
        names = [output.name for output in self.session.get_outputs()]
        wanted = [t.name for t in self.tasks] if source.outputs == "by_task" else []
        missing = [n for n in [*wanted, *([source.features] if source.features else [])]
                   if n not in names]
        if missing:
            raise TrainingError(code="teacher_mismatch", message=(
                f"teacher '{name}': ONNX outputs {names} lack {missing}"))
        logit_outputs = [n for n in names if n != source.features]
        self.output_names = wanted or logit_outputs[:1]

    def outputs(self, x: torch.Tensor) -> TeacherOutputs:
        """Run the session over x in batches and split the outputs per task."""
        fetch = self.output_names + ([self.source.features] if self.source.features else [])

        def run(chunk: torch.Tensor) -> tuple[Tensors, torch.Tensor | None]:
            values = [torch.from_numpy(np.asarray(v, dtype=np.float32)).reshape(len(chunk), -1)
                      for v in self.session.run(fetch, {self.input_name: chunk.numpy()})]
            feature = values.pop() if self.source.features else None
            return _split_by_task(values, self.tasks, concatenated=self.source.outputs == "concatenated",
                                  teacher=self.name, kind="ONNX"), feature

        return _outputs_in_batches(x, self.tasks, run, outputs_are=self.source.outputs_are)


class TorchScriptTeacher:
    """A TorchScript module run on the CPU; ``allowed`` must be True (loading it runs its code)."""

    def __init__(self, source: TorchScriptSourceSpec, *, tasks: Sequence[TaskSpec], resolver: FileResolver,
                 name: str, allowed: bool) -> None:
        if not allowed:
            raise TrainingError(code="torchscript_disabled", message=(
                f"teacher '{name}': TorchScript teachers run the code inside the file and are off; "
                "the server enables them with DISTILLERY_ALLOW_TORCHSCRIPT=true"))
        path = resolver.resolve(source.file)
        self.source, self.tasks, self.name = source, list(tasks), name
        try:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as error:  # torch raises RuntimeError/ValueError for a bad archive
            raise TrainingError(code="teacher_mismatch", message=(
                f"teacher '{name}': '{source.file}' is not a loadable TorchScript module: "
                f"{str(error).splitlines()[0][:300] if str(error) else type(error).__name__}")) from None
        self.params = int(sum(p.numel() for p in self.module.parameters()))
        self.identity = teacher_identity(kind="torchscript", content_sha256=_file_sha256(path),
                                         settings=source.model_dump(mode="json", exclude={"file"}),
                                         tasks=self.tasks)

    def outputs(self, x: torch.Tensor) -> TeacherOutputs:
        """Call the module over x in batches and split its answer per task."""
        def run(chunk: torch.Tensor) -> tuple[Tensors, torch.Tensor | None]:
            try:
                with torch.no_grad():
                    answer = self.module(chunk)
            except Exception as error:  # a scripted module raises torch.jit.Error and the like
                raise TrainingError(code="teacher_mismatch", message=(
                    f"teacher '{self.name}': the TorchScript module failed on a batch of shape "
                    f"{tuple(chunk.shape)}: {str(error).splitlines()[-1][:300] if str(error) else ''}")) from None
            return self._per_task(answer, rows=len(chunk))

        return _outputs_in_batches(x, self.tasks, run, outputs_are=self.source.outputs_are)

    def _per_task(self, answer: object, *, rows: int) -> tuple[Tensors, torch.Tensor | None]:
        """Split one batch's answer (one tensor, or a dict keyed by task) into (logits per task, features)."""
        if isinstance(answer, torch.Tensor):
            if self.source.features:
                raise TrainingError(code="teacher_mismatch", message=(
                    f"teacher '{self.name}': 'features' names key '{self.source.features}' but the module "
                    "returns one tensor, not a dict"))
            flat = answer.float().reshape(rows, -1)  # (batch, sum of task widths)
            return _split_by_task([flat], self.tasks, concatenated=True, teacher=self.name,
                                  kind="TorchScript"), None
        if not isinstance(answer, dict):
            raise TrainingError(code="teacher_mismatch", message=(
                f"teacher '{self.name}': the TorchScript module returns {type(answer).__name__}; "
                "it must return a dict of tensors keyed by task or one tensor"))
        wanted = [t.name for t in self.tasks] + ([self.source.features] if self.source.features else [])
        missing = [key for key in wanted if key not in answer]
        if missing:
            raise TrainingError(code="teacher_mismatch", message=(
                f"teacher '{self.name}': TorchScript outputs {sorted(answer)} lack {missing}"))
        values = [answer[task.name].float().reshape(rows, -1) for task in self.tasks]  # (batch, width)
        feature = (answer[self.source.features].float().reshape(rows, -1)  # (batch, width)
                   if self.source.features else None)
        return _split_by_task(values, self.tasks, concatenated=False, teacher=self.name,
                              kind="TorchScript"), feature


class PrecomputedTeacher:
    """Teacher outputs read from an NPZ: `<split>.<task>` logits (or probabilities) and `<split>.features`."""

    params = None
    identity = None  # nothing to compute, nothing to cache

    def __init__(self, source: OutputsSourceSpec, *, tasks: Sequence[TaskSpec],
                 rows: dict[str, int], resolver: FileResolver, name: str) -> None:
        path = resolver.resolve(source.file)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (ValueError, OSError) as error:
            raise TrainingError(code="teacher_mismatch", message=(
                f"teacher '{name}': '{source.file}' is not an NPZ without pickles: {error}")) from None
        self.splits: dict[str, TeacherOutputs] = {}
        for split, n_rows in rows.items():
            wanted = {task.name: (f"{split}.{task.name}", output_size(task)) for task in tasks}
            if source.features:
                wanted["features"] = (f"{split}.features", None)
            found = {}
            for key, (array_name, width) in wanted.items():
                array = arrays.get(array_name)
                if array is None or array.ndim != 2 or len(array) != n_rows or (
                        width is not None and array.shape[1] != width):
                    shape = None if array is None else list(array.shape)
                    raise TrainingError(code="teacher_mismatch", message=(
                        f"teacher '{name}': '{source.file}' needs array '{array_name}' of shape "
                        f"[{n_rows}, {width or 'width'}] (got {shape})"))
                found[key] = torch.from_numpy(array.astype(np.float32))
            features = found.pop("features", None)
            self.splits[split] = TeacherOutputs(
                logits=as_logits(found, tasks, source.outputs_are), features=features)
