"""Every name a job spec may use, one table each: the spec's Literals and GET /v1/catalog read them.

A name lives here once; `literal(TABLE)` turns a table into the pydantic `Literal` that validates
it, so adding an entry to a table is the whole change on the spec side.
"""

import copy
from typing import Any, Literal

from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.hf_config import BUILTIN_BACKBONES, HF_ENCODER_FAMILIES


def literal(table: dict[str, Any]) -> Any:
    """Return `Literal[<the table's names>]`, in table order."""
    return Literal[tuple(table)]  # type: ignore[valid-type]


TASK_KINDS: dict[str, str] = {
    "multiclass": "one of num_classes classes: CE; soft KL(teacher_T || student_T) * T^2",
    "binary": "0/1 target: BCE; soft Bernoulli KL(sigmoid(t/T) || sigmoid(s/T)) * T^2",
    "multilabel": "num_classes independent 0/1 labels: BCE and Bernoulli KL per label",
    "regression": "real target: MSE on standardised targets; soft MSE to the teacher's "
                  "standardised prediction",
}
KINDS_WITH_CLASSES = ("multiclass", "multilabel")

# `fields` is also what ArchSpec accepts for the type (a field listed for other types only is refused).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp": {
        "description": ("shared trunk of Linear+ReLU(+dropout) layers, one Linear+ReLU head per task; "
                        "inputs flattened, a table's category codes embedded (dataset.encoding)"),
        "fields": {"trunk": "list of trunk widths (teachers may say 'hidden')",
                   "head": "list of per-task head widths", "dropout": "dropout after trunk layers"},
        "feature_taps": ["trunk"],
    },
    "cnn1d": {
        "description": ("sequences (channels, length) or (length,): Conv1d+ReLU+MaxPool(2) per "
                        "channel width, global average pooling, dense trunk, one head per task"),
        "fields": {"channels": "conv widths (default [32, 64])",
                   "kernel_size": "odd conv kernel size (default 5)",
                   "trunk": "dense widths after pooling", "head": "list of per-task head widths",
                   "dropout": "dropout after dense trunk layers"},
        "feature_taps": ["trunk"],
    },
    "cnn2d": {
        "description": ("images (channels, height, width) or (height, width): as cnn1d with "
                        "Conv2d and MaxPool2d"),
        "fields": {"channels": "conv widths (default [32, 64])",
                   "kernel_size": "odd conv kernel size (default 5)",
                   "trunk": "dense widths after pooling", "head": "list of per-task head widths",
                   "dropout": "dropout after dense trunk layers"},
        "feature_taps": ["trunk"],
    },
    "resnet": {
        "description": ("small images (channels, height, width) or (height, width): 3x3 conv+BN+ReLU "
                        "stem, stages of basic residual blocks (stride 2 at the first block of each "
                        "later stage), global average pooling, dense trunk, one head per task"),
        "fields": {"channels": "stage widths (default [32, 64])",
                   "blocks": "basic blocks per stage, one per channels entry (default [2, 2])",
                   "trunk": "dense widths after pooling (may be empty)",
                   "head": "list of per-task head widths",
                   "dropout": "dropout after dense trunk layers"},
        "feature_taps": ["trunk"],
    },
    "mobilenet": {
        "description": ("images as resnet: 3x3 conv+BN+ReLU6 stem, stages of MobileNetV2 inverted "
                        "residuals (1x1 expand, 3x3 depthwise, 1x1 linear project, BatchNorm, "
                        "ReLU6; x added when shapes match), global average pooling, dense trunk"),
        "fields": {"channels": "stage widths (default [32, 64])",
                   "blocks": "inverted residuals per stage, one per channels entry (default [2, 2])",
                   "expansion": "width multiplier of the 1x1 expansion (default 4)",
                   "trunk": "dense widths after pooling (may be empty)",
                   "head": "list of per-task head widths",
                   "dropout": "dropout after dense trunk layers"},
        "feature_taps": ["trunk"],
    },
    "mmoe": {
        "description": ("Multi-gate Mixture-of-Experts (Ma et al. 2018): inputs flattened "
                        "(category codes embedded); MLP "
                        "experts shared by all tasks, one softmax gate per task mixing them into "
                        "that task's tower (its head)"),
        "fields": {"experts": "number of experts (default 4)",
                   "expert": "widths of each expert MLP (default [64])",
                   "head": "list of per-task tower widths", "dropout": "on each tower's input"},
        # trunk: every task's tower input side by side, (batch, n_tasks * expert[-1])
        "feature_taps": ["trunk", "task:<task>"],
    },
    "ple": {
        "description": ("Progressive Layered Extraction (Tang et al. 2020): inputs flattened "
                        "(category codes embedded); "
                        "levels of shared and per-task MLP experts, a softmax gate per task over "
                        "its own and the shared experts, and between levels a shared gate over all "
                        "experts; one tower (head) per task"),
        "fields": {"levels": "number of extraction levels (default 2)",
                   "shared_experts": "shared experts per level (default 2)",
                   "task_experts": "experts of each task per level (default 2)",
                   "expert": "widths of each expert MLP (default [64])",
                   "head": "list of per-task tower widths", "dropout": "on each tower's input"},
        "feature_taps": ["trunk", "task:<task>"],
    },
}
ARCHITECTURES["transformer"] = {
    "description": ("tokenised text (2, max_length): a BERT encoder (transformers BertConfig) "
                    "built from the sizes, or a pretrained `backbone` (teachers); cls or mean "
                    "pooling; one head per task (archs_text.py)"),
    "fields": {"layers": "encoder layers (default 2)", "hidden_size": "width (default 128)",
               "attention_heads": "heads (default 4; divides hidden_size)",
               "intermediate_size": "feed-forward width (default 512)",
               "pooling": "'cls' (default) or 'mean' over real tokens",
               "backbone": ("pretrained encoder: 'minilm-l6' or an uploaded teacher_hf file; its "
                            "config sets the sizes (teachers only)"),
               "finetune": "with a backbone: 'heads' (default; backbone frozen) or 'all'",
               "init_from_teacher": ("students: copy the transformer teacher's embeddings and "
                                     "every k-th layer (DistilBERT); sizes must match the teacher's"),
               "prune_vocab": "students: embedding rows only for the token ids seen in training",
               "head": "list of per-task head widths", "dropout": "encoder dropout"},
    "feature_taps": ["trunk"],
}
# Input ranks (without the batch axis) each architecture accepts; mlp, mmoe, ple flatten anything.
ARCH_INPUT_RANKS: dict[str, tuple[int, ...]] = {"transformer": (2,), "cnn1d": (1, 2), "cnn2d": (2, 3), "resnet": (2, 3),
                                                "mobilenet": (2, 3)}
# The architectures that flatten their input, and so may start with a table's embeddings
# (dataset.encoding "embedding"); the others refuse category codes.
EMBEDDING_ARCHS = ("mlp", "mmoe", "ple")

# training.augment: what each field does to a student/baseline batch; the fields of AugmentSpec.
AUGMENTATIONS: dict[str, str] = {
    "crop_padding": ("p >= 0: pad each image by p zeros on every side and take a random crop of the "
                     "original height and width, its own per sample (0: no crop)"),
    "flip": "true: mirror each image left-right with probability 0.5, per sample",
}
# Input ranks (no batch axis) augmentation accepts: (height, width), (channels, height, width).
AUGMENT_INPUT_RANKS: tuple[int, ...] = (2, 3)

STRATEGIES: dict[str, str] = {
    "task_kd": "per-task soft labels from the teachers at temperature T, mixed with hard labels by alpha",
    "feature_kd": "trunk features matched to each teacher's through a learned adaptor (normalised MSE)",
    "cascaded": "stage 1 distils the trunk by features, stage 2 trains the whole student with task_kd",
    "transfer": ("teachers from a source domain (another dataset, or a file); student on the target "
                 "with label_fraction of labels"),
}
LOSS_TERMS: dict[str, str] = {
    "soft": "per-task KD term against the teachers' ensemble at temperature T",
    "feature": "normalised MSE between the student's trunk (through an adaptor) and each teacher's",
    "hidden": ("transformers: TinyBERT MSE between the student's hidden states (learned projection) "
               "and the teacher's on distillation.layer_map pairs; the teacher runs online"),
    "attention": ("transformers: TinyBERT MSE between attention distributions of mapped layers "
                  "(head means when head counts differ); the teacher runs online"),
}
LAYER_TERMS = {"hidden", "attention"}
# The loss terms each preset adds to the per-task hard loss.
PRESET_TERMS: dict[str, list[str]] = {
    "task_kd": ["soft"], "feature_kd": ["feature"], "cascaded": ["soft"], "transfer": ["soft"]}

TEACHER_SOURCES: dict[str, str] = {
    "train": ("zoo architecture trained inside the job, on the labelled rows of the job's dataset "
              "or on another built-in dataset (a source domain)"),
    "weights": "safetensors file of a zoo architecture",
    "onnx": "ONNX model run with onnxruntime; outputs named after tasks or one concatenated output",
    "torchscript": ("TorchScript module (torch.jit.load); runs the code inside it, so only accepted when "
                    "DISTILLERY_ALLOW_TORCHSCRIPT=true; returns a dict keyed by task or one concatenated tensor"),
    "outputs": "NPZ of precomputed logits per task (and optional features) aligned with the rows",
}
ONNX_OUTPUTS: dict[str, str] = {
    "by_task": "one output per task, named after it",
    "concatenated": "the first output holds every task's logits side by side in the teacher's task order",
}
TEACHER_OUTPUTS_ARE: dict[str, str] = {
    "logits": "raw scores (classification) or values in the target's units (regression)",
    "probabilities": ("class probabilities (multiclass rows sum to 1) or sigmoid outputs "
                      "(binary, multilabel); turned into logits before use"),
}
WEIGHTING_METHODS: dict[str, str] = {
    "equal": "every task loss has weight 1",
    "fixed": "user-given weight per task (tasks not listed get 1)",
    "uncertainty": ("Kendall et al. 2018: a learned log-variance s per task; regression tasks "
                    "add 1/2 exp(-s) L + 1/2 s, classification tasks exp(-s) L + 1/2 s; a task "
                    "with no loss term in a batch adds nothing"),
    "dwa": ("Liu et al. 2019: weights K * softmax(r / T) from each task's loss ratio "
            "r = L(t-1) / L(t-2) over the last two epochs; 'temperature' T (default 2)"),
    "gradnorm": ("Chen et al. 2018: learned weights (summing to the number of tasks) that balance "
                 "the gradient norms at the last shared trunk layer; 'alpha' (default 1.5); a "
                 "task's L(0) is its loss in the first batch where it has one"),
}
SCHEDULES: dict[str, str] = {
    "constant": "the learning rate stays at lr",
    "cosine": "linear warm-up over warmup_steps, then cosine decay to 0 at the stage's last step",
    "onecycle": "Smith's one-cycle policy (torch OneCycleLR) peaking at lr over the stage's steps",
}
SELECTIONS: dict[str, str] = {
    "last": "keep the weights of the last epoch",
    "best": ("keep the epoch with the best validation score (mean over tasks of the primary "
             "metric; regression rmse counts negated, in units of the target's std)"),
}
DEVICES: dict[str, str] = {
    "auto": "CUDA when the worker has it, else the CPU",
    "cpu": "the CPU",
    "cuda": "a CUDA device (the job fails where the worker has none)",
}
PRECISIONS: dict[str, str] = {
    "fp32": "float32 throughout (the default: the same numbers on every device)",
    "bf16": "the training step's forward under bfloat16 autocast, on CUDA or the CPU; losses in float32",
    "fp16": "float16 autocast with a gradient scaler; CUDA only (refused on a CPU-only worker pool)",
}
DATA_PLACEMENTS: dict[str, str] = {
    "auto": "device unless the rows do not fit (see docs/PERFORMANCE.md)",
    "device": "every training tensor on the training device; batches are index slices",
    "stream": "rows stay on the CPU; a DataLoader gathers each batch",
    "disk": ("an uploaded parquet or npz file is read in chunks into row stores on disk; "
             "training, the teacher pass and evaluation read them chunk by chunk (data larger "
             "than memory)"),
}
EXPORT_FORMATS: dict[str, str] = {
    "safetensors": "student.safetensors + student.json (rebuilds the model)",
    "onnx": "student.onnx: input 'x', one output per task",
}
DATASET_FORMATS: dict[str, str] = {"npz": "x and y_<task> arrays", "csv": "a table",
                                   "parquet": "a table",
                                   "images": ("a zip of PNG/JPEG files and one CSV (`file` and label "
                                              "columns); needs image_size")}
# How a table's categorical columns reach the model (dataset.encoding; docs/spec.md).
ENCODINGS: dict[str, str] = {
    "embedding": ("one column per categorical feature holding its integer code (0 unknown, 1..K "
                  "the train categories, sorted); mlp, mmoe and ple learn an embedding per column"),
    "onehot": "one 0/1 column per train category (an unseen category is all zeros)",
}

TaskKind = literal(TASK_KINDS)
ArchType = literal(ARCHITECTURES)
StrategyName = literal(STRATEGIES)
TermName = literal(LOSS_TERMS)
OnnxOutputs = literal(ONNX_OUTPUTS)
OutputsAre = literal(TEACHER_OUTPUTS_ARE)
WeightingMethod = literal(WEIGHTING_METHODS)
ScheduleName = literal(SCHEDULES)
SelectionName = literal(SELECTIONS)
DeviceName = literal(DEVICES)
PlacementName = literal(DATA_PLACEMENTS)
PrecisionName = literal(PRECISIONS)
ExportFormat = literal(EXPORT_FORMATS)
DatasetFormat = literal(DATASET_FORMATS)
Encoding = literal(ENCODINGS)


def catalog() -> dict[str, Any]:
    """Return every table above, plus the built-in datasets (what GET /v1/catalog serves)."""
    return copy.deepcopy({
        "datasets": BUILTIN_DATASETS,
        "task_kinds": TASK_KINDS,
        "architectures": ARCHITECTURES,
        "augmentations": AUGMENTATIONS,
        "strategies": STRATEGIES,
        "loss_terms": LOSS_TERMS,
        "teacher_sources": TEACHER_SOURCES,
        "onnx_outputs": ONNX_OUTPUTS,
        "teacher_outputs_are": TEACHER_OUTPUTS_ARE,
        "weighting_methods": WEIGHTING_METHODS,
        "schedules": SCHEDULES,
        "selections": SELECTIONS,
        "devices": DEVICES,
        "data_placements": DATA_PLACEMENTS,
        "precisions": PRECISIONS,
        "export_formats": EXPORT_FORMATS,
        "dataset_formats": DATASET_FORMATS,
        "encodings": ENCODINGS,
        # Hugging Face checkpoints: the config.json model_types a teacher_hf upload may hold, and the
        # built-in pretrained backbones (arch.backbone) with the package that ships each.
        "hf_encoder_families": list(HF_ENCODER_FAMILIES),
        "backbones": BUILTIN_BACKBONES,
    })
