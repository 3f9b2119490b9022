"""Static metadata of the built-in datasets: importable without torch or scikit-learn."""

from typing import Any

# What the spec validator and GET /v1/catalog need to know about each built-in dataset.
# The loaders in this package must produce exactly these tasks, shapes and sizes (a test checks).
BUILTIN_DATASETS: dict[str, dict[str, Any]] = {
    "digits-mt": {
        "description": (
            "scikit-learn 8x8 handwritten digits (offline), pixels scaled to [0, 1]; "
            "fixed stratified 75/25 split"
        ),
        "input_shape": [64],
        "n_train": 1347,
        "n_test": 450,
        "tasks": {
            "digit": {"kind": "multiclass", "num_classes": 10, "description": "digit 0-9"},
            "parity": {"kind": "multiclass", "num_classes": 2, "description": "digit % 2"},
            "large": {"kind": "binary", "description": "digit >= 5"},
        },
    },
}


def describe_task(meta: dict[str, Any]) -> str:
    """Return a short human description of a catalog task's kind, e.g. 'multiclass, 10 classes'."""
    if meta.get("num_classes") is not None:
        return f"{meta['kind']}, {meta['num_classes']} classes"
    return str(meta["kind"])
