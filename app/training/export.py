"""Student export: safetensors weights + a JSON config that rebuilds it, and ONNX.

Files written to the artifacts directory:
    student.json          {"format_version": 1, "arch": ArchSpec, "tasks": [TaskSpec],
                           "input_shape": [...], "onnx": {"input": "x", "outputs": [task names]},
                           "layout": null or {"numeric", "cardinalities", "names"}}
    student.safetensors   the model's state_dict (load with load_student)
    student.onnx          input "x" (batch, *input_shape) float32, one output per task, named
                          after the task, (batch, num_classes or 1) logits; dynamic batch axis

With a table layout (dataset.encoding "embedding"), x is still float32 (batch, d): the `numeric`
standardised columns first, then one column per categorical feature holding its integer code as
a float (0 unknown, 1..K); the model casts the codes to int64 itself (ONNX: Cast + Gather).
"""

import copy
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from app.training.checkpoint import atomic_path
from app.training.datasets.splits import TableLayout
from app.training.export_text import load_text_student
from app.training.models import build_model
from app.training.spec import ArchSpec, TaskSpec

FORMAT_VERSION = 1
CONFIG_NAME = "student.json"
WEIGHTS_NAME = "student.safetensors"
ONNX_NAME = "student.onnx"
ONNX_INPUT = "x"
ONNX_OPSET = 17


def answer_in_original_units(model: nn.Module, scales: dict[str, dict[str, float]]) -> nn.Module:
    """Make `model` map standardised regression outputs back to the task's units: y = z * std + mean.

    Regression heads train on standardised targets; the exported student (ONNX and load_student)
    answers in the original units. A forward hook does it, so the state_dict keeps its keys.
    """
    if scales:
        affine = {task: (float(s["mean"]), float(s["std"])) for task, s in scales.items()}

        def to_original(_module: nn.Module, _inputs: Any, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {task: z * affine[task][1] + affine[task][0] if task in affine else z for task, z in logits.items()}

        model.register_forward_hook(to_original)
    return model


def write_student_config(*, arch: ArchSpec, tasks: Sequence[TaskSpec], input_shape: Sequence[int],
                         directory: Path, target_scales: dict[str, Any] | None = None,
                         layout: TableLayout | None = None) -> Path:
    """Write student.json: everything load_student needs besides the weights."""
    config = {
        "format_version": FORMAT_VERSION,
        "arch": arch.model_dump(mode="json"),
        "tasks": [task.model_dump(mode="json") for task in tasks],
        "input_shape": list(input_shape),
        "onnx": {"input": ONNX_INPUT, "outputs": [task.name for task in tasks]},
        # regression tasks: outputs are z * std + mean (already applied by ONNX and load_student)
        "target_scales": {task: {"mean": s.mean, "std": s.std} for task, s in (target_scales or {}).items()},
        # tables: x's first `numeric` columns are numbers, the rest category codes as floats
        "layout": None if layout is None else layout.as_json(),
    }
    path = directory / CONFIG_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    return path


def write_safetensors(model: nn.Module, *, directory: Path) -> Path:
    """Write the model's weights to student.safetensors."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    path = directory / WEIGHTS_NAME
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format_version": str(FORMAT_VERSION)})
    return path


class _TupleOutputs(nn.Module):
    """Return the task logits as a tuple in a fixed order (what the ONNX exporter names)."""

    def __init__(self, model: nn.Module, task_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.task_names = list(task_names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(x)
        return tuple(logits[name] for name in self.task_names)


def write_onnx(model: nn.Module, *, task_names: Sequence[str], input_shape: Sequence[int],
               directory: Path, target_scales: dict[str, Any] | None = None) -> Path:
    """Export the model to student.onnx with a dynamic batch axis and outputs named by task."""
    scales = {task: {"mean": s.mean, "std": s.std} for task, s in (target_scales or {}).items()}
    wrapper = _TupleOutputs(answer_in_original_units(copy.deepcopy(model), scales), task_names).cpu().eval()
    example = torch.zeros(2, *input_shape)
    axes = {name: {0: "batch"} for name in [ONNX_INPUT, *task_names]}
    path = directory / ONNX_NAME
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript exporter needs no onnxscript; torch marks it deprecated since 2.9.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, (example,), str(tmp), input_names=[ONNX_INPUT],
                          output_names=list(task_names), dynamic_axes=axes,
                          opset_version=ONNX_OPSET, dynamo=False)
    return path


def load_student(directory: Path | str) -> Any:
    """Rebuild the student from student.json + student.safetensors in `directory`.

    Returns the model in eval mode on the CPU; `model(x)` with x of shape
    (batch, *input_shape) returns {task: logits (batch, num_classes or 1)}, regression tasks in
    their original units. A text student (student.json has "text") comes back as an
    export_text.TextStudent: `.model`, `.tokenizer`, and `.predict(strings)`.
    """
    directory = Path(directory)
    config = json.loads((directory / CONFIG_NAME).read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported student format version {config.get('format_version')!r}")
    if config.get("text") is not None:
        return load_text_student(directory, config, weights=directory / WEIGHTS_NAME,
                                 original_units=answer_in_original_units)
    model = build_model(ArchSpec.model_validate(config["arch"]), input_shape=config["input_shape"],
                        tasks=[TaskSpec.model_validate(task) for task in config["tasks"]],
                        layout=TableLayout.from_json(config.get("layout")))
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
    return answer_in_original_units(model, config.get("target_scales") or {}).eval()
