"""What a text job adds to the loop: the layer distiller (hidden / attention terms against the
first transformer teacher, run online) and the student's DistilBERT-style start from that teacher."""

from typing import Any

import torch
from torch import nn

from app.training.archs_text import TextEncoderNet, teacher_init_state
from app.training.catalog import LAYER_TERMS
from app.training.datasets.splits import DatasetSplits
from app.training.losses_transformer import LayerDistiller, resolve_layer_map
from app.training.models import build_model
from app.training.spec import JobSpec
from app.training.spec_text import layer_teacher_index


def _layer_teacher(spec: JobSpec, teachers: list[Any]) -> TextEncoderNet | None:
    index = layer_teacher_index(spec)
    model = None if index is None else getattr(teachers[index], "model", None)
    return model if isinstance(model, TextEncoderNet) else None


def layer_distiller(spec: JobSpec, teachers: list[Any]) -> LayerDistiller | None:
    """Return the distiller of the job's hidden / attention terms, or None without them."""
    terms = LAYER_TERMS & set(spec.distillation.terms or [])
    teacher = _layer_teacher(spec, teachers)
    if not terms or teacher is None:
        return None
    pairs = resolve_layer_map(spec.distillation.layer_map or "uniform",
                              student_layers=spec.student.layers or 0,
                              teacher_layers=int(teacher.encoder.config.num_hidden_layers))
    return LayerDistiller(teacher, pairs=pairs, hidden="hidden" in terms,
                          attention="attention" in terms)


def student_init(spec: JobSpec, data: DatasetSplits, teachers: list[Any]) -> dict[str, torch.Tensor] | None:
    """Return the student's initial state copied from the transformer teacher, or None."""
    teacher = _layer_teacher(spec, teachers)
    if not spec.student.init_from_teacher or teacher is None or data.text is None:
        return None
    torch.manual_seed(spec.training.seed)  # the layers not copied (heads) start as train_stage's
    student = build_model(spec.student, input_shape=data.input_shape, tasks=list(spec.tasks),
                          text=data.text)
    assert isinstance(student, TextEncoderNet)
    return teacher_init_state(student, teacher, kept_ids=data.text.kept_ids)


def add_layer_adaptors(distiller: LayerDistiller | None, model: nn.Module,
                       adaptors: nn.ModuleDict) -> None:
    """Give a student stage the hidden-state projections and turn on its layer taps."""
    if distiller is not None and isinstance(model, TextEncoderNet):
        model.layer_taps = True
        adaptors.update(distiller.projections(model.trunk_features))


def text_summary(spec: JobSpec, data: DatasetSplits, *, teachers: dict[str, Any]) -> dict[str, Any]:
    """The dry run's text entry: tokenizer, vocabulary, and what the layer terms cache or run online."""
    assert data.text is not None
    text = data.text
    terms = sorted(LAYER_TERMS & set(spec.distillation.terms or []))
    index = layer_teacher_index(spec)
    teacher = None if index is None else teachers.get(spec.teachers[index].name)
    summary: dict[str, Any] = {
        "max_length": text.max_length, "vocab_size": text.vocab_size,
        "tokenizer": ("the pretrained teachers' (" + ", ".join(sorted(text.backbones)) + ")"
                      if text.backbones else "a WordPiece trained on the train split"),
        "tokens_seen_in_train": len(text.kept_ids),
        "layer_terms": terms,
        "cached": "teacher logits per task (the teacher-output cache), tokenised rows (the token cache)",
    }
    if isinstance(teacher, TextEncoderNet):
        config = teacher.encoder.config
        rows = len(data.x_train)
        per_row = text.max_length * (config.num_hidden_layers + 1) * config.hidden_size * 4
        attention = text.max_length ** 2 * config.num_hidden_layers * config.num_attention_heads * 4
        summary["hidden_state_cache_bytes"] = rows * per_row
        summary["attention_cache_bytes"] = rows * attention
        if terms:
            summary["layer_map"] = resolve_layer_map(
                spec.distillation.layer_map or "uniform", student_layers=spec.student.layers or 0,
                teacher_layers=int(config.num_hidden_layers))
            summary["online"] = (f"the {' and '.join(terms)} term(s): teacher '{spec.teachers[index].name}' "
                                 "runs on every student batch (no_grad); caching its hidden states "
                                 f"would take {rows * per_row / 2**30:.1f} GiB")
    return summary
