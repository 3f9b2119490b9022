"""Uploads in the S3-compatible object store (``DISTILLERY_STORAGE_BACKEND=s3``), for workers on other hosts.

The API puts each checked upload under ``<S3_FILES_PREFIX><tenant id>/<file id>`` and deletes it with
its record. A host that runs a job (a worker, or the API's validator) reads uploads through its own
copies under ``DATA_DIR/file-cache/<sha256>``: a missing copy is downloaded to a temp file while it
is hashed, kept only when the sha256 recorded at upload matches, and renamed into place (atomic).
No path is ever taken from a spec or the database: a cache name is the recorded digest, checked to be
64 hex digits, and an object key is built from ids checked to be plain names.
"""

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import ServiceUnavailable
from app.training.errors import TrainingError

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger("distillery.files")
CHUNK = 1 << 20
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def uploads_in_object_store(settings: "Settings") -> bool:
    """True where uploads live in the object store (the artifact store's bucket), not on the API's volume."""
    return settings.storage_backend == "s3"


def object_key(settings: "Settings", *, tenant_id: str, file_id: str) -> str:
    """Return the object key of a tenant's upload."""
    for value in (tenant_id, file_id):
        if not PLAIN_ID.fullmatch(value):
            raise ValueError(f"{value!r} is not a plain id")
    return f"{settings.s3_files_prefix}{tenant_id}/{file_id}"


@dataclass(frozen=True)
class ObjectStore:
    """Where the bucket is: plain data, so it pickles into the validator and DDP processes (a client does not)."""

    bucket: str
    endpoint_url: str | None
    region: str

    @classmethod
    def from_settings(cls, settings: "Settings") -> "ObjectStore":
        return cls(bucket=settings.s3_bucket or "", endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region)


def put_upload(settings: "Settings", *, key: str, source: Path, sha256: str) -> None:
    """Stream a checked upload to the store (multipart for large files); 503 when the store fails."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        ObjectStore.from_settings(settings).client().upload_file(
            str(source), settings.s3_bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}})
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        log.error("upload %s: could not put it in the object store: %s", key, exc)
        raise ServiceUnavailable(f"the object store did not take the file ({type(exc).__name__}); "
                                 "nothing was kept, retry", headers={"Retry-After": "5"}) from exc


def delete_upload(settings: "Settings", *, key: str) -> None:
    """Delete an upload's object (deleting a missing key succeeds); 503 when the store fails."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        ObjectStore.from_settings(settings).client().delete_object(Bucket=settings.s3_bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        log.error("upload %s: could not delete it from the object store: %s", key, exc)
        raise ServiceUnavailable(f"the object store did not delete the file ({type(exc).__name__}); "
                                 "the file is kept, retry", headers={"Retry-After": "5"}) from exc


@dataclass(frozen=True)
class StoredUpload:
    """One upload a job may read: its object key and what was recorded when it was accepted."""

    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class UploadCache:
    """A host's verified copies of uploads, one file per sha256 (shared by the tenants that uploaded it)."""

    root: Path
    store: ObjectStore

    @classmethod
    def for_settings(cls, settings: "Settings") -> "UploadCache":
        return cls(root=(settings.data_dir / "file-cache").resolve(), store=ObjectStore.from_settings(settings))

    def path(self, sha256: str) -> Path:
        if not SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 digest")
        return self.root / sha256

    def entries(self) -> list[str]:
        """Return the digests this host holds (temp files and locks are not entries)."""
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if SHA256_HEX.fullmatch(p.name)]

    def adopt(self, source: Path, sha256: str) -> None:
        """Keep an upload this host has just checked and hashed (the API: its validator reads it next)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.replace(source, self.path(sha256))
        except OSError as exc:  # only a saved download: the upload itself is stored already
            log.warning("upload %s: not kept in this host's copies (%s); it is downloaded when a job needs it",
                        sha256, exc)

    def forget(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def fetch(self, upload: StoredUpload, *, ref: str) -> Path:
        """Return the verified local copy of ``upload``, downloading it first when this host has none."""
        target = self.path(upload.sha256)
        if _complete(target, upload.size):
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f".{upload.sha256}.lock"):  # one download per host, however many ranks ask
            if _complete(target, upload.size):
                return target
            tmp = self.root / f".{upload.sha256}.{os.getpid()}.{os.urandom(4).hex()}.part"
            try:
                got = self._download(upload, tmp, ref=ref)
                if got != upload.sha256:
                    raise _corrupt(ref, f"the sha256 recorded at upload is {upload.sha256}, the object's is {got}")
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        log.info("file %s: downloaded %d bytes from the object store (sha256 %s verified)", ref, upload.size,
                 upload.sha256)
        return target

    def _download(self, upload: StoredUpload, tmp: Path, *, ref: str) -> str:
        """Stream the object into ``tmp`` and return its sha256."""
        from botocore.exceptions import BotoCoreError, ClientError

        digest, size = hashlib.sha256(), 0
        try:
            body = self.store.client().get_object(Bucket=self.store.bucket, Key=upload.key)["Body"]
            try:
                with tmp.open("wb") as out:
                    for chunk in body.iter_chunks(CHUNK):
                        size += len(chunk)
                        if size > upload.size:  # a replaced object must not fill the disk before the check fails
                            raise _corrupt(ref, f"the object holds more than the {upload.size} bytes recorded at upload")
                        digest.update(chunk)
                        out.write(chunk)
            finally:
                body.close()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise TrainingError(code="file_not_found", message=(
                    f"file {ref!r} is not in the object store (was it uploaded before the server used one? "
                    "upload it again)")) from None
            raise _unavailable(ref, exc) from None
        except BotoCoreError as exc:
            raise _unavailable(ref, exc) from None
        return digest.hexdigest()


def _corrupt(ref: str, why: str) -> TrainingError:
    return TrainingError(code="file_corrupt", message=(
        f"file {ref!r}: the object store's copy is not the file that was uploaded ({why}); it was changed or "
        "damaged after the upload, so it is not used: upload the file again"))


def _unavailable(ref: str, exc: Exception) -> TrainingError:
    return TrainingError(code="storage_unavailable", message=(
        f"file {ref!r} could not be read from the object store: {type(exc).__name__}: {str(exc)[:200]}"))


def _complete(path: Path, size: int) -> bool:
    """A copy is only ever renamed into place after its digest matched, so its size is check enough."""
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class ObjectStoreFileResolver:
    """The engine's FileResolver for uploads in the object store: a file id of the job's tenant -> a verified copy."""

    uploads: dict[str, StoredUpload]  # only the tenant's files the spec names, read from the database
    cache: UploadCache

    def resolve(self, ref: str) -> Path:
        upload = self.uploads.get(ref)
        if upload is None:
            raise TrainingError(code="file_not_found", message=f"file {ref!r} is not (or no longer) uploaded")
        return self.cache.fetch(upload, ref=ref)
