"""Artifact stores: a local directory (default) or an S3-compatible bucket (workers on several hosts)."""

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.config import Settings

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


def _check_name(name: str) -> None:
    if "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid artifact name {name!r}")


class ArtifactStore(Protocol):
    def save(self, *, job_id: str, name: str, source: Path) -> StoredObject: ...
    def local_path(self, key: str) -> Path | None:
        """Return the file on this host that holds ``key``, or None where the store keeps none (read
        ranges instead); FileNotFoundError where the store keeps files and this one is gone."""
    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]: ...
    def delete_job(self, job_id: str) -> None: ...


class LocalArtifactStore:
    """Keeps each job's artifacts under ``root/<job_id>/<name>``; writes are atomic (copy + rename)."""

    def __init__(self, root: Path):
        self.root = root

    def save(self, *, job_id: str, name: str, source: Path) -> StoredObject:
        _check_name(name)
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

    def local_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"artifact {key!r} is not in the store")
        return path

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        with self.path(key).open("rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)


class S3ArtifactStore:
    """Keeps artifacts as ``<prefix><job_id>/<name>`` objects; downloads stream byte ranges from S3."""

    def __init__(self, *, bucket: str, prefix: str, endpoint_url: str | None, region: str):
        import boto3

        self.bucket, self.prefix = bucket, prefix
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def save(self, *, job_id: str, name: str, source: Path) -> StoredObject:
        _check_name(name)
        key = f"{self.prefix}{job_id}/{name}"
        digest = sha256_file(source)
        self.client.upload_file(str(source), self.bucket, key, ExtraArgs={"Metadata": {"sha256": digest}})
        return StoredObject(key=key, size=source.stat().st_size, sha256=digest)

    def local_path(self, key: str) -> None:
        return None  # objects are read as byte ranges

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def delete_job(self, job_id: str) -> None:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}{job_id}/")
        keys = [{"Key": obj["Key"]} for obj in listed.get("Contents", [])]
        if keys:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


def get_store(settings: "Settings") -> ArtifactStore:
    """Return the artifact store the settings name."""
    if settings.storage_backend == "s3":
        return S3ArtifactStore(bucket=settings.s3_bucket, prefix=settings.s3_prefix,
                               endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
    return LocalArtifactStore(settings.resolved_artifact_dir)
