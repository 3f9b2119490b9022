"""The sections of a job spec (dataset, tasks, student, distillation, weighting, training; the
teachers are in spec_teachers.py), each a small pydantic model with the checks that need only
its own fields.

Cross-section rules live in spec.py (JobSpec). Names come from catalog.py's tables.
"""

import copy
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from app.training.catalog import (ARCHITECTURES, KINDS_WITH_CLASSES, PRESET_TERMS, ArchType,
                                  DatasetFormat, DeviceName, Encoding, PlacementName, PrecisionName,
                                  ScheduleName, SelectionName, StrategyName, TaskKind, TermName, WeightingMethod)
from app.training.datasets.catalog import BUILTIN_DATASETS
from app.training.spec_files import check_dataset_files
from app.training.spec_text import check_text_dataset, check_transformer_arch

# Names end up in file names, ONNX output names and CSV headers: keep them plain.
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
Width = Annotated[int, Field(ge=1, le=16384)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
UnitFloat = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
# A file reference: a local path now; the uploads API maps its file ids through the same resolver.
FileRef = Annotated[str, Field(min_length=1, max_length=1000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _error(kind: str, message: str) -> PydanticCustomError:
    # Braces in user-given names must not be read as format placeholders.
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"))


def _unset(value: Any) -> bool:
    return value is None


class DatasetSpec(_Strict):
    """Where the rows come from: a built-in dataset, an uploaded file (NPZ, CSV, Parquet or images)
    or several uploaded Parquet files read as one table (`files`, spec_files.py).

    Files: NPZ holds `x` and `y_<task>` arrays (optional `split`); a table maps each task to a
    column (`targets`, default: the column named after the task; multilabel: a list of columns),
    its features are `features` (default: every other column), and `split_column` may fix the split
    ("train", "val"/"validation", "test"). An images zip holds PNG/JPEG files and one CSV with a
    `file` column, a column per task and optionally `split` (datasets/images.py); its inputs are
    (channels, *image_size).
    Validation rows: those the split marks, else a seeded `validation_fraction` of train,
    stratified like the test split.
    """

    # Only the fields given are stored (a built-in spec keeps its original form and sha256).
    builtin: str | None = Field(default=None, exclude_if=_unset)
    file: FileRef | None = Field(default=None, exclude_if=_unset)
    files: list[FileRef] | None = Field(default=None, exclude_if=_unset, min_length=1, max_length=256)
    format: DatasetFormat | None = Field(default=None, exclude_if=_unset)
    targets: dict[str, str | list[str]] | None = Field(default=None, exclude_if=_unset)
    features: list[str] | None = Field(default=None, exclude_if=_unset, min_length=1)
    split_column: str | None = Field(default=None, exclude_if=_unset)
    # Tables: numeric features are standardised with train statistics unless this is false (set it
    # false when an uploaded teacher expects the raw feature values).
    standardize: bool | None = Field(default=None, exclude_if=_unset)
    # Tables: columns read as categorical even though they hold numbers (integer codes, such as an
    # industry code); text columns are categorical anyway.
    categorical: list[str] | None = Field(default=None, exclude_if=_unset, min_length=1)
    # Tables: categorical columns as codes for embedding tables (default) or one-hot blocks.
    encoding: Encoding | None = Field(default=None, exclude_if=_unset)
    # Tables, embedding encoding: a categorical column with more train categories than this is
    # hashed into this many buckets (zlib.crc32 of the text, mod hash_buckets, + 1).
    hash_buckets: int | None = Field(default=None, ge=2, le=1_000_000, exclude_if=_unset)
    # Images: every image is resized (bilinear) to [height, width] and read as grayscale (1) or RGB (3).
    image_size: list[Annotated[int, Field(ge=1, le=1024)]] | None = Field(
        default=None, min_length=2, max_length=2, exclude_if=_unset)
    channels: Literal[1, 3] | None = Field(default=None, exclude_if=_unset)
    validation_fraction: float = Field(default=0.1, gt=0, le=0.5, allow_inf_nan=False)
    # Text (spec_text.py): the text columns, tokenised to (input_ids, attention_mask) rows.
    text: list[str] | None = Field(default=None, min_length=1, max_length=16, exclude_if=_unset)
    max_length: int | None = Field(default=None, ge=4, le=4096, exclude_if=_unset)
    vocab_size: int | None = Field(default=None, ge=100, le=1_000_000, exclude_if=_unset)
    max_train_rows: int | None = Field(default=None, ge=10, exclude_if=_unset)
    max_test_rows: int | None = Field(default=None, ge=10, exclude_if=_unset)

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, name: str | None) -> str | None:
        return None if name is None else _known_dataset(name)

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        if [self.builtin, self.file, self.files].count(None) != 2:
            raise _error("dataset_source", "dataset: give exactly one of 'builtin', 'file' or 'files'")
        check_dataset_files(self, _error)  # before the format checks: it writes back 'parquet'
        if self.file is not None and self.format is None:
            raise _error("dataset_format", "dataset.format: say how to read the file: "
                                           f"{', '.join(get_args(DatasetFormat))}")
        offered = BUILTIN_DATASETS[self.builtin].get("encodings", {}) if self.builtin else {}
        if self.builtin is not None and (offered or self.encoding is not None):
            if self.encoding is None:
                self.encoding = next(iter(offered))  # written back, as for tables
            if self.encoding not in offered:
                raise _error("dataset_encoding", (
                    f"dataset.encoding: built-in dataset '{self.builtin}' offers "
                    f"{', '.join(offered) or 'no encodings (its inputs are not a table)'}"))
        table_only = [f for f in ("targets", "features", "split_column", "standardize", "encoding",
                                  "hash_buckets", "categorical") if getattr(self, f) is not None
                      and not (f == "encoding" and self.builtin is not None)]
        if table_only and self.format != "csv" and self.format != "parquet":
            raise _error("dataset_table_fields", f"dataset.{table_only[0]}: only for csv or parquet files")
        if self.format in ("csv", "parquet"):
            if self.encoding is None:
                self.encoding = "embedding"  # written back: the stored spec says how columns were read
            if self.hash_buckets is not None and self.encoding != "embedding":
                raise _error("dataset_hash_buckets", "dataset.hash_buckets: only with encoding 'embedding'")
            if self.categorical is not None and self.features is not None:
                stray = [c for c in self.categorical if c not in self.features]
                if stray:
                    raise _error("dataset_categorical", (
                        f"dataset.categorical: {stray} are not among dataset.features"))
        check_text_dataset(self, _error)
        image_only = [f for f in ("image_size", "channels") if getattr(self, f) is not None]
        if image_only and self.format != "images":
            raise _error("dataset_image_fields", f"dataset.{image_only[0]}: only for images files")
        if self.format == "images":
            if self.image_size is None:
                raise _error("dataset_image_size", "dataset.image_size: give [height, width] (1..1024 each) "
                                                   "to resize the images to")
            if self.channels is None:
                self.channels = 1  # written back: the stored spec says how the images were read
        return self


def _known_dataset(name: str) -> str:
    if name not in BUILTIN_DATASETS:
        known = ", ".join(sorted(BUILTIN_DATASETS))
        raise _error("unknown_dataset", f"unknown built-in dataset '{name}'; known: {known}")
    meta = BUILTIN_DATASETS[name]
    if not meta.get("available", True):
        raise _error("dataset_unavailable", f"built-in dataset '{name}' is not installed on this "
                                            f"server; {meta['requires']}")
    return name


class TaskSpec(_Strict):
    """One prediction task of the multi-task student."""

    name: Name
    kind: TaskKind
    num_classes: int | None = Field(default=None, ge=1, le=100000)
    distill: bool = True  # False: hard labels only, no teacher needed and no soft term

    @model_validator(mode="after")
    def _classes_match_kind(self) -> "TaskSpec":
        if self.kind in KINDS_WITH_CLASSES and self.num_classes is None:
            raise _error("missing_num_classes", f"num_classes is required for a {self.kind} task")
        if self.kind == "multiclass" and self.num_classes is not None and self.num_classes < 2:
            raise _error("too_few_classes", "num_classes must be >= 2 for a multiclass task")
        if self.kind not in KINDS_WITH_CLASSES and self.num_classes is not None:
            raise _error("unexpected_num_classes", f"num_classes is not used by a {self.kind} task")
        return self


class ArchSpec(_Strict):
    """A zoo architecture; `hidden` is accepted as another name for `trunk`.

    Every field but type, head and dropout belongs to the types whose catalog entry lists it
    (catalog.ARCHITECTURES[type]["fields"]): its default is filled in there, it is absent from
    the stored form of the others, and giving it to another type is an error. For the CNNs,
    `trunk` lists the dense layers after global pooling; mmoe and ple have no trunk.
    """

    type: ArchType = "mlp"
    trunk: list[Width] | None = Field(default=None, max_length=16, exclude_if=_unset)
    head: list[Width] = Field(default_factory=list, max_length=16)
    dropout: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.0
    channels: list[Width] | None = Field(default=None, min_length=1, max_length=16, exclude_if=_unset)
    kernel_size: int | None = Field(default=None, ge=1, le=31, exclude_if=_unset)
    blocks: list[Annotated[int, Field(ge=1, le=16)]] | None = Field(
        default=None, min_length=1, max_length=16, exclude_if=_unset)
    expansion: int | None = Field(default=None, ge=1, le=16, exclude_if=_unset)
    experts: int | None = Field(default=None, ge=1, le=64, exclude_if=_unset)
    expert: list[Width] | None = Field(default=None, min_length=1, max_length=16, exclude_if=_unset)
    levels: int | None = Field(default=None, ge=1, le=8, exclude_if=_unset)
    shared_experts: int | None = Field(default=None, ge=1, le=64, exclude_if=_unset)
    task_experts: int | None = Field(default=None, ge=1, le=64, exclude_if=_unset)
    # transformer (archs_text.py): a BERT student from these sizes, or a pretrained `backbone`
    layers: int | None = Field(default=None, ge=1, le=48, exclude_if=_unset)
    hidden_size: int | None = Field(default=None, ge=8, le=4096, exclude_if=_unset)
    attention_heads: int | None = Field(default=None, ge=1, le=64, exclude_if=_unset)
    intermediate_size: int | None = Field(default=None, ge=8, le=16384, exclude_if=_unset)
    pooling: Literal["cls", "mean"] | None = Field(default=None, exclude_if=_unset)
    backbone: str | None = Field(default=None, min_length=1, max_length=1000, exclude_if=_unset)
    finetune: Literal["heads", "all"] | None = Field(default=None, exclude_if=_unset)
    init_from_teacher: bool | None = Field(default=None, exclude_if=_unset)
    prune_vocab: bool | None = Field(default=None, exclude_if=_unset)

    # The default of each field that only some types use.
    TYPE_FIELD_DEFAULTS: ClassVar[dict[str, Any]] = {
        "trunk": [64], "channels": [32, 64], "kernel_size": 5, "blocks": [2, 2], "expansion": 4,
        "experts": 4, "expert": [64], "levels": 2, "shared_experts": 2, "task_experts": 2,
        "layers": 2, "hidden_size": 128, "attention_heads": 4, "intermediate_size": 512,
        "pooling": "cls", "backbone": None, "finetune": None, "init_from_teacher": None,
        "prune_vocab": None}

    @model_validator(mode="after")
    def _fields_match_type(self) -> "ArchSpec":
        used = ARCHITECTURES[self.type]["fields"]
        unexpected = [name for name in self.TYPE_FIELD_DEFAULTS
                      if name not in used and getattr(self, name) is not None]
        if unexpected:
            problems = []
            for name in unexpected:
                users = [other for other, entry in ARCHITECTURES.items() if name in entry["fields"]]
                listed = " and ".join([", ".join(users[:-1]), users[-1]] if len(users) > 1 else users)
                problems.append(f"{name}: only used by {listed}, not {self.type}")
            raise _error("unexpected_arch_field", "; ".join(problems))
        for name, default in self.TYPE_FIELD_DEFAULTS.items():
            if name in used and getattr(self, name) is None:
                setattr(self, name, copy.deepcopy(default))
        if self.kernel_size is not None and self.kernel_size % 2 == 0:
            raise _error("even_kernel_size", "kernel_size must be odd (convolutions keep the size)")
        if self.blocks is not None and self.channels is not None and len(self.blocks) != len(self.channels):
            raise _error("blocks_per_stage", f"blocks: one entry per stage, as many as channels "
                         f"({len(self.channels)}), got {len(self.blocks)}")
        if self.type == "transformer":
            check_transformer_arch(self, _error)
        return self

    @model_validator(mode="before")
    @classmethod
    def _hidden_is_trunk(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hidden" in data:
            if "trunk" in data:
                raise _error("hidden_and_trunk", "give either 'trunk' or 'hidden', not both")
            data = {("trunk" if key == "hidden" else key): value for key, value in data.items()}
        return data


class TaskKDOverride(_Strict):
    """Per-task override of the distillation temperature and/or alpha."""

    temperature: PositiveFloat | None = None
    alpha: UnitFloat | None = None


class DistillationSpec(_Strict):
    """How the student learns from the teachers; total per task = alpha*soft + (1-alpha)*hard.

    `terms` defaults to the strategy's preset and can combine them, e.g. ["soft", "feature"].
    """

    strategy: StrategyName = "task_kd"
    terms: list[TermName] | None = Field(default=None, min_length=1)
    temperature: PositiveFloat = 4.0
    alpha: UnitFloat = 0.5
    per_task: dict[str, TaskKDOverride] = Field(default_factory=dict)
    feature_weight: PositiveFloat = 1.0  # weight of each teacher's feature term
    trunk_epochs: int | None = Field(default=None, ge=1, le=10000)  # cascaded stage 1
    label_fraction: UnitFloat = 1.0  # share of training rows whose labels the student sees
    online: bool = False  # run the teachers every step (for augmentation) instead of the cache
    # Transformer terms "hidden" and "attention" (losses_transformer.py): (student layer, teacher
    # layer) pairs, 0 = embeddings, or "uniform" (TinyBERT's m -> m * N / M).
    layer_map: Literal["uniform"] | list[Annotated[list[Annotated[int, Field(ge=0, le=64)]],
                                                   Field(min_length=2, max_length=2)]] | None = Field(
        default=None, exclude_if=_unset)
    hidden_weight: PositiveFloat | None = Field(default=None, exclude_if=_unset)
    attention_weight: PositiveFloat | None = Field(default=None, exclude_if=_unset)

    @model_validator(mode="after")
    def _preset_defaults(self) -> "DistillationSpec":
        if self.terms is None:
            self.terms = list(PRESET_TERMS[self.strategy])
        if len(set(self.terms)) != len(self.terms):
            raise _error("duplicate_term", "terms: a loss term is listed twice")
        if {"hidden", "attention"} & set(self.terms):
            self.layer_map = self.layer_map or "uniform"
            self.hidden_weight = self.hidden_weight or (1.0 if "hidden" in self.terms else None)
            self.attention_weight = self.attention_weight or (1.0 if "attention" in self.terms else None)
        elif self.layer_map is not None:
            raise _error("unexpected_layer_map", "distillation.layer_map: only used by the "
                         "'hidden' and 'attention' terms")
        if self.strategy == "cascaded":
            self.trunk_epochs = self.trunk_epochs or 10
        elif self.trunk_epochs is not None:
            raise _error("unexpected_trunk_epochs", "trunk_epochs is only used by 'cascaded'")
        return self


class TransferSetSpec(_Strict):
    """Unlabelled extra inputs the teachers label: generated by the dataset, or an NPZ `x` file."""

    generate: int | None = Field(default=None, ge=1, le=10_000_000)
    file: FileRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "TransferSetSpec":
        if (self.generate is None) == (self.file is None):
            raise _error("transfer_source", "give exactly one of 'generate' (a number of new "
                         "samples) or 'file' (an NPZ with an array 'x')")
        return self


class WeightingSpec(_Strict):
    """How per-task losses are combined into the total loss (see WEIGHTING_METHODS).

    `alpha` (GradNorm, default 1.5) and `temperature` (DWA, default 2) are filled in for their
    method only and absent from the stored form of the others.
    """

    method: WeightingMethod = "equal"
    weights: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = None
    alpha: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] | None = Field(
        default=None, exclude_if=lambda value: value is None)
    temperature: PositiveFloat | None = Field(default=None, exclude_if=lambda value: value is None)

    @model_validator(mode="after")
    def _weights_match_method(self) -> "WeightingSpec":
        if self.method == "fixed" and not self.weights:
            raise _error("missing_weights", "weights are required when method is 'fixed'")
        if self.method != "fixed" and self.weights is not None:
            raise _error("unexpected_weights", "weights are only used when method is 'fixed'")
        for name, method, default in (("alpha", "gradnorm", 1.5), ("temperature", "dwa", 2.0)):
            if self.method == method:
                setattr(self, name, default if getattr(self, name) is None else getattr(self, name))
            elif getattr(self, name) is not None:
                raise _error("unexpected_weighting_field",
                             f"{name} is only used when method is '{method}'")
        return self


class EarlyStoppingSpec(_Strict):
    """Stop a stage when the validation score has not improved by min_delta for `patience` evaluations."""

    patience: int = Field(ge=1, le=10000)
    min_delta: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class AugmentSpec(_Strict):
    """Random crops and flips of the student's and the baseline's images (catalog.AUGMENTATIONS)."""

    crop_padding: int = Field(default=0, ge=0, le=64)  # the bound caps the padded batch's memory
    flip: bool = False


class TrainingSpec(_Strict):
    """Optimisation budget and protocol of the student (the baseline and in-job teachers share
    the schedule, the evaluation cadence, the selection and early stopping)."""

    epochs: int = Field(default=30, ge=1, le=10000)
    batch_size: int = Field(default=128, ge=1, le=65536)
    lr: PositiveFloat = 2e-3
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    device: DeviceName = "auto"
    precision: PrecisionName = "fp32"  # the training step's (precision.py); the same on every device
    input_noise: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 0.0  # augmentation
    augment: AugmentSpec | None = None  # random crops / flips of image inputs (rank 2 or 3)
    # Where training rows live: all on the device (index slices) or streamed by a DataLoader.
    data_placement: PlacementName = "auto"
    loader_workers: int = Field(default=0, ge=0, le=32)  # DataLoader processes ("stream" only)
    compile: bool = False  # torch.compile the student's forward
    schedule: ScheduleName = "constant"
    warmup_steps: int = Field(default=0, ge=0, le=10_000_000)  # cosine only
    selection: SelectionName = "last"
    early_stopping: EarlyStoppingSpec | None = None
    # Evaluate on validation every k epochs (and always at a stage's last epoch); the curves have
    # a row per evaluation. k > 1 saves the validation pass on short epochs.
    eval_every: int = Field(default=1, ge=1, le=10000)
    deterministic: bool = False  # CUDA: deterministic algorithms, no cudnn.benchmark

    @model_validator(mode="after")
    def _warmup_needs_cosine(self) -> "TrainingSpec":
        if self.warmup_steps and self.schedule != "cosine":
            raise _error("unexpected_warmup", "training.warmup_steps: only used by schedule 'cosine'")
        return self


class MlflowTrackingSpec(_Strict):
    """The MLflow experiment (and run name) a job logs to, on the server the worker is set up
    with (DISTILLERY_MLFLOW_TRACKING_URI): a spec never names a server itself."""

    experiment: str = Field(min_length=1, max_length=250)
    run_name: str | None = Field(default=None, min_length=1, max_length=250)  # default: the job's name


class TrackingSpec(_Strict):
    """Experiment trackers a job logs to, besides its TensorBoard artifact (always written)."""

    mlflow: MlflowTrackingSpec | None = None


class ResourcesSpec(_Strict):
    """What a job needs from its worker: `devices` data-parallel processes (one per GPU on a CUDA
    worker, gloo CPU processes elsewhere); training.batch_size stays the global batch."""

    devices: int = Field(default=1, ge=1, le=64)
