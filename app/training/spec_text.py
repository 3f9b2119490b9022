"""The job-spec rules of text jobs and transformer models (called from spec_sections.py and spec.py).

Kept apart so the sections stay short; each takes the section and the spec's `_error` factory.
"""

from collections.abc import Callable
from typing import Any

from app.training.catalog import LAYER_TERMS

Error = Callable[[str, str], Exception]
SIZE_FIELDS = ("layers", "hidden_size", "attention_heads", "intermediate_size")


def check_transformer_arch(arch: Any, error: Error) -> None:
    """A pretrained backbone takes its sizes from its config; a student's sizes must fit."""
    if arch.backbone is not None:  # "minilm-l6" or a teacher_hf reference, resolved when the job runs
        for field in SIZE_FIELDS:  # filled in by default: the backbone's config decides
            setattr(arch, field, None)
        if arch.init_from_teacher or arch.prune_vocab:
            raise error("backbone_student_fields", "init_from_teacher and prune_vocab are for "
                        "transformer students built from sizes, not for a pretrained backbone")
        arch.finetune = arch.finetune or "heads"
        return
    if arch.finetune is not None:
        raise error("finetune_without_backbone", "finetune: only for a pretrained backbone")
    if arch.hidden_size % arch.attention_heads:
        raise error("heads_divide_hidden", f"attention_heads ({arch.attention_heads}) must divide "
                    f"hidden_size ({arch.hidden_size})")
    arch.init_from_teacher = bool(arch.init_from_teacher)
    arch.prune_vocab = bool(arch.prune_vocab)


def check_text_dataset(dataset: Any, error: Error) -> None:
    """Text fields need a text dataset (a csv/parquet with `text`, or a built-in text one)."""
    from app.training.datasets.catalog import BUILTIN_DATASETS

    builtin_text = bool(dataset.builtin and BUILTIN_DATASETS.get(dataset.builtin, {}).get("text"))
    if dataset.text is not None and dataset.file is not None and dataset.format not in ("csv", "parquet"):
        raise error("dataset_text", "dataset.text: only for csv or parquet files or a built-in text dataset")
    if dataset.text is not None and dataset.builtin is not None and not builtin_text:
        raise error("dataset_text", f"dataset.text: built-in dataset '{dataset.builtin}' has no text")
    if dataset.text is not None and dataset.features is not None:
        raise error("dataset_text", "dataset.text: give text columns or features, not both")
    is_text = dataset.text is not None or builtin_text
    stray = [f for f in ("max_length", "vocab_size", "max_train_rows", "max_test_rows") if getattr(dataset, f) is not None]
    if stray and not is_text:
        raise error("dataset_text_fields", f"dataset.{stray[0]}: only for text datasets (dataset.text)")
    if is_text:
        dataset.max_length = dataset.max_length or 128
        if dataset.builtin is not None and dataset.text is None:
            dataset.text = list(BUILTIN_DATASETS[dataset.builtin]["text"])
        if (dataset.file is not None or dataset.files is not None) and dataset.encoding is not None:
            dataset.encoding = None  # no table features: nothing is encoded


def check_text_job(spec: Any, error: Error) -> None:
    """Text needs transformer models and no input noise or augmentation; layer terms need a
    pretrained (or in-job) transformer teacher and a transformer student."""
    is_text = spec.dataset.text is not None
    archs = [("student", spec.student)] + [
        (f"teachers[{i}].source.{t.source.kind}.arch", (t.source.train or t.source.weights).arch)
        for i, t in enumerate(spec.teachers) if t.source.train or t.source.weights]
    for where, arch in archs:
        if is_text != (arch.type == "transformer"):
            raise error("arch_input_mismatch", (
                f"{where}.type: {'text rows need' if is_text else 'only text rows (dataset.text) take'}"
                f" the 'transformer' architecture, not {arch.type}" if is_text else
                f"{where}.type: the transformer architecture reads text; set dataset.text"))
    if spec.student.backbone is not None:
        raise error("student_backbone", "student.backbone: a student is built from sizes "
                    "(layers, hidden_size, ...); pretrained backbones are teachers")
    if is_text and (spec.training.input_noise > 0 or spec.training.augment is not None):
        raise error("text_augment", "training.input_noise / augment: not for token ids")
    layer_terms = sorted(LAYER_TERMS & set(spec.distillation.terms or []))
    if (layer_terms or spec.student.init_from_teacher) and layer_teacher_index(spec) is None:
        raise error("layer_kd_without_transformer", (
            f"distillation.terms {layer_terms or ''}{' / student.init_from_teacher' if spec.student.init_from_teacher else ''}: "
            "needs a transformer teacher (source train or weights with arch type 'transformer')"))


def layer_teacher_index(spec: Any) -> int | None:
    """The teacher the layer terms and init_from_teacher read: the first transformer teacher."""
    for index, teacher in enumerate(spec.teachers):
        source = teacher.source.train or teacher.source.weights
        if source is not None and source.arch.type == "transformer":
            return index
    return None
