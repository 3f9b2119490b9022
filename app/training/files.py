"""File references: how the engine turns a spec's file reference into a local path.

The uploads API maps its file ids through its own resolver (app/files/refs.py), so the
engine never knows about HTTP or tenants.
"""

from pathlib import Path
from typing import Protocol

from app.training.errors import TrainingError


class FileResolver(Protocol):
    """Turn a spec's file reference (a path, or an uploaded file id) into a local path."""

    def resolve(self, ref: str) -> Path: ...


class LocalFileResolver:
    """Resolve references as local paths, relative ones against `base`."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = Path.cwd() if base is None else Path(base)

    def resolve(self, ref: str) -> Path:
        """Return the existing file `ref` names, or raise a file_not_found TrainingError."""
        path = Path(ref) if Path(ref).is_absolute() else self.base / ref
        if not path.is_file():
            raise TrainingError(code="file_not_found", message=f"teacher file '{ref}' not found")
        return path
