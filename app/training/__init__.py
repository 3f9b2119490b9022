"""Distillery training engine: pure PyTorch + pydantic, nothing from the web or queue layers.

The engine's public names, for the worker, the validator, the CLI and the API. Each is imported on
first use (PEP 562), so ``from app.training import JobSpec`` in the API process loads the spec's
pydantic models and never torch; ``from app.training import train`` loads the engine.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Bound here, not lazily: the name is also a submodule's, and importing a submodule (spec.py does)
# sets the package attribute to the module, which a lazy lookup could no longer replace.
from app.training.catalog import catalog

if TYPE_CHECKING:  # what type checkers and readers see; at run time __getattr__ imports these
    from app.training.callbacks import CallbackChain, TrainCallbacks
    from app.training.datasets.images import check_image_archive
    from app.training.datasets.registry import import_loaders
    from app.training.errors import TrainingCancelled, TrainingError
    from app.training.evaluate import PRIMARY_METRICS
    from app.training.loop import train
    from app.training.mlflow_tracking import tracked
    from app.training.preflight import DryRunError, dry_run
    from app.training.results import Result
    from app.training.spec import JobSpec, spec_sha256

# public name -> the module that defines it
_LAZY = {
    "CallbackChain": "app.training.callbacks",
    "TrainCallbacks": "app.training.callbacks",
    "check_image_archive": "app.training.datasets.images",
    "import_loaders": "app.training.datasets.registry",
    "TrainingCancelled": "app.training.errors",
    "TrainingError": "app.training.errors",
    "PRIMARY_METRICS": "app.training.evaluate",
    "train": "app.training.loop",
    "tracked": "app.training.mlflow_tracking",
    "DryRunError": "app.training.preflight",
    "dry_run": "app.training.preflight",
    "Result": "app.training.results",
    "JobSpec": "app.training.spec",
    "spec_sha256": "app.training.spec",
}

__all__ = [
    "PRIMARY_METRICS", "CallbackChain", "DryRunError", "JobSpec", "Result", "TrainCallbacks",
    "TrainingCancelled", "TrainingError", "catalog", "check_image_archive", "dry_run", "import_loaders",
    "spec_sha256", "tracked", "train",
]


def __getattr__(name: str) -> Any:
    """Import the module behind a public name on first use (``AttributeError`` for anything else)."""
    module = _LAZY.get(name)
    if module is None:  # lets ``from app.training import cache`` fall back to importing the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
