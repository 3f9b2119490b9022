"""The teachers of a job spec: each teacher's tasks, ensemble weight and exactly one source
(trained in the job, safetensors weights, ONNX, TorchScript, or precomputed outputs)."""

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from app.training.catalog import TEACHER_SOURCES, OnnxOutputs, OutputsAre
from app.training.spec_sections import (ArchSpec, FileRef, Name, PositiveFloat, _error,
                                        _known_dataset, _Strict)


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
    outputs: OnnxOutputs = "by_task"
    features: str | None = None  # name of an output with trunk features (batch, width)
    outputs_are: OutputsAre = "logits"


class TorchScriptSourceSpec(_Strict):
    """A TorchScript module (torch.jit.save archive) called on the job's inputs, on the CPU.

    Loading it runs the code it carries: the server accepts it only with DISTILLERY_ALLOW_TORCHSCRIPT=true.
    """

    file: FileRef
    # The module returns either a dict with one tensor per task (keyed by task name, plus the
    # `features` key if given) or one tensor holding every task's logits side by side in the
    # teacher's task order.
    features: str | None = None  # key of the returned dict with trunk features (batch, width)
    outputs_are: OutputsAre = "logits"


class OutputsSourceSpec(_Strict):
    """Precomputed teacher outputs: NPZ with `train.<task>`/`test.<task>` logits (rows aligned)."""

    file: FileRef
    features: bool = False  # True: the NPZ also holds `train.features` and `test.features`
    outputs_are: OutputsAre = "logits"


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
    def outputs_are(self) -> str | None:
        """Return what a file source's outputs are (logits or probabilities); None for zoo models."""
        given = self.onnx or self.torchscript or self.outputs
        return None if given is None else given.outputs_are

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
    # Share of this teacher in the ensemble of each task it covers (normalised over the task's
    # teachers): probabilities (classification) or standardised predictions are averaged so.
    weight: PositiveFloat = 1.0
