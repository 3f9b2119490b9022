"""Export of a text student: ONNX with token inputs, tokenizer.json, and a loader that answers strings.

Files, besides student.json (which gains a "text" entry) and student.safetensors:
    student.onnx     inputs "input_ids" and "attention_mask", int64 (batch, sequence), sequence
                     up to max_length; one output per task, named after it, (batch, num_classes
                     or 1) logits (regression in the target's units); dynamic batch and sequence
    tokenizer.json   the Hugging Face `tokenizers` tokenizer the rows were made with: encode a
                     string, truncate to max_length, pad, and feed its ids and attention mask
`load_text_student(directory)` returns a TextStudent: the model, the tokenizer, and `predict`,
which takes raw strings and returns per-task predictions.
"""

import copy
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.checkpoint import atomic_path
from app.training.datasets.text_inputs import TextInputs
from app.training.spec import ArchSpec, TaskSpec

TOKENIZER_NAME = "tokenizer.json"
ONNX_INPUTS = ("input_ids", "attention_mask")
ONNX_OPSET = 17


class _TokenInputs(nn.Module):
    """(input_ids, attention_mask) int64 -> the model's x rows -> task logits as a tuple."""

    def __init__(self, model: nn.Module, task_names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.task_names = model, list(task_names)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.stack([input_ids, attention_mask], dim=1).float()  # (batch, 2, sequence)
        logits = self.model(x)
        return tuple(logits[name] for name in self.task_names)


def write_text_exports(model: nn.Module, *, tasks: Sequence[TaskSpec], text: TextInputs,
                       config_path: Path, onnx_path: Path | None, target_scales: dict[str, Any],
                       original_units: Callable[[nn.Module, dict[str, Any]], nn.Module]) -> list[Path]:
    """Write tokenizer.json, the "text" entry of student.json, and student.onnx (unless
    `onnx_path` is None); `original_units` is export.answer_in_original_units."""
    directory = config_path.parent
    written = []
    tokenizer = directory / TOKENIZER_NAME
    with atomic_path(tokenizer) as tmp:
        tmp.write_text(text.tokenizer_json)
    written.append(tokenizer)
    config = json.loads(config_path.read_text())
    config["text"] = {"max_length": text.max_length, "vocab_size": text.vocab_size,
                      "pad_id": text.pad_id, "unk_id": text.unk_id, "tokenizer": TOKENIZER_NAME,
                      "tokenizer_sha256": text.tokenizer_sha256, "kept_ids": list(text.kept_ids)}
    config["onnx"] = {"inputs": list(ONNX_INPUTS), "outputs": [task.name for task in tasks]}
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    if onnx_path is not None:
        scales = {task: {"mean": s.mean, "std": s.std} for task, s in target_scales.items()}
        copied = copy.deepcopy(model).cpu().eval()
        copied.layer_taps = False
        wrapper = _TokenInputs(original_units(copied, scales), [t.name for t in tasks]).eval()
        ids = torch.full((2, text.max_length), text.pad_id, dtype=torch.long)
        mask = torch.ones(2, text.max_length, dtype=torch.long)
        axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
        axes.update({task.name: {0: "batch"} for task in tasks})
        with atomic_path(onnx_path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(wrapper, (ids, mask), str(tmp), input_names=list(ONNX_INPUTS),
                              output_names=[task.name for task in tasks], dynamic_axes=axes,
                              opset_version=ONNX_OPSET, dynamo=False)
        written.append(onnx_path)
    return written


@dataclass
class TextStudent:
    """A loaded text student: `model(x)` on (batch, 2, length) rows, its tokenizer, and `predict`."""

    model: nn.Module
    tokenizer: Any  # tokenizers.Tokenizer, truncating to max_length and padding
    tasks: list[TaskSpec]
    max_length: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Return the (batch, 2, max_length) float rows of raw strings."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.float32)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.float32)
        return torch.stack([ids, mask], dim=1)

    @torch.no_grad()
    def predict(self, texts: Sequence[str]) -> dict[str, list[Any]]:
        """Return per task: class ids (multiclass), 0/1 (binary), 0/1 lists (multilabel) or values."""
        logits = self.model(self.encode(texts))
        answers: dict[str, list[Any]] = {}
        for task in self.tasks:
            z = logits[task.name]  # (batch, out)
            answers[task.name] = (z.argmax(-1).tolist() if task.kind == "multiclass"
                                  else (z[:, 0] > 0).long().tolist() if task.kind == "binary"
                                  else (z > 0).long().tolist() if task.kind == "multilabel"
                                  else z[:, 0].tolist())
        return answers


def load_text_student(directory: Path, config: dict[str, Any], *, weights: Path,
                      original_units: Callable[[nn.Module, dict[str, Any]], nn.Module]) -> TextStudent:
    """Rebuild a text student from student.json's "text" entry, its weights and tokenizer.json
    (export.load_student calls it with the weights file and answer_in_original_units)."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    from app.training.models import build_model

    info = config["text"]
    text = TextInputs(vocab_size=info["vocab_size"], pad_id=info["pad_id"], unk_id=info["unk_id"],
                      max_length=info["max_length"], tokenizer_json="",
                      tokenizer_sha256=info["tokenizer_sha256"], kept_ids=tuple(info["kept_ids"]))
    tasks = [TaskSpec.model_validate(task) for task in config["tasks"]]
    model = build_model(ArchSpec.model_validate(config["arch"]), input_shape=config["input_shape"],
                        tasks=tasks, text=text)
    model.load_state_dict(load_file(str(weights)))
    model = original_units(model, config.get("target_scales") or {}).eval()
    tokenizer = Tokenizer.from_file(str(directory / info["tokenizer"]))
    tokenizer.enable_truncation(max_length=text.max_length)
    tokenizer.enable_padding(length=text.max_length, pad_id=text.pad_id, pad_token="[PAD]")
    return TextStudent(model=model, tokenizer=tokenizer, tasks=tasks, max_length=text.max_length)
