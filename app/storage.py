"""Artifact store: a local directory (the embedded and single-host default)."""

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LocalArtifactStore:
    """Keeps each job's artifacts under ``root/<job_id>/<name>``; writes are atomic (copy + rename)."""

    def __init__(self, root: Path):
        self.root = root

    def save(self, *, job_id: str, name: str, source: Path) -> StoredObject:
        if "/" in name or name.startswith("."):
            raise ValueError(f"invalid artifact name {name!r}")
        target_dir = self.root / job_id
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / name
        tmp = target_dir / f".{name}.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        return StoredObject(key=f"{job_id}/{name}", size=target.stat().st_size, sha256=sha256_file(target))

    def path(self, key: str) -> Path:
        resolved = (self.root / key).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key {key!r} leaves the store")
        return resolved

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)


def get_store(root: Path) -> LocalArtifactStore:
    return LocalArtifactStore(root)
