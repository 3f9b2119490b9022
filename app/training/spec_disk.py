"""What a job whose rows stay on disk (`training.data_placement: "disk"`) may ask for.

The rows of an uploaded Parquet or NPZ file, or of several Parquet files (`dataset.files`), are
read chunk by chunk (datasets/streamed.py); the parts of a job that need every row in memory at
once are refused here, naming the field at fault.
"""

from collections.abc import Callable
from typing import Any

Error = Callable[[str, str], Exception]
DISK_FORMATS = ("parquet", "npz")


def check_disk_placement(spec: Any, error: Error) -> None:
    """Raise `error(kind, message)` when the spec asks for "disk" with something it cannot stream."""
    if spec.training.data_placement != "disk":
        return
    dataset = spec.dataset
    if dataset.builtin is not None or dataset.format not in DISK_FORMATS:
        raise error("disk_needs_file", (
            "training.data_placement: 'disk' reads uploaded parquet files or an npz file in chunks; "
            f"this dataset is {'built-in' if dataset.builtin is not None else dataset.format!r} "
            "(use 'auto', 'device' or 'stream')"))
    if getattr(dataset, "text", None) is not None:
        raise error("disk_text", "training.data_placement: 'disk' reads numeric and categorical "
                                 "columns; dataset.text columns are tokenised in memory")
    if spec.transfer_set is not None:
        raise error("disk_transfer_set", "transfer_set: a transfer set is held in memory; it "
                                         "cannot join rows on disk (data_placement 'disk')")
    if spec.distillation.label_fraction < 1:
        raise error("disk_label_fraction", (
            "distillation.label_fraction: with data_placement 'disk' every train row keeps its "
            "label (a label mask is one value per row in memory); use 1"))
    for index, teacher in enumerate(spec.teachers):
        source = teacher.source
        if source.outputs is not None:
            raise error("disk_precomputed", (
                f"teachers[{index}].source.outputs: precomputed outputs are read whole; with "
                "data_placement 'disk' give the teacher as weights, onnx or train"))
        if source.train is not None and source.train.dataset is not None:
            raise error("disk_source_domain", (
                f"teachers[{index}].source.train.dataset: a teacher trained on another dataset "
                "is not supported with data_placement 'disk'"))
    resources = getattr(spec, "resources", None)
    if resources is not None and getattr(resources, "devices", 1) > 1:
        raise error("disk_devices", "resources.devices: data_placement 'disk' trains in one "
                                    "process for now (its chunk order is not sharded over ranks)")
