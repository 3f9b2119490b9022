"""Uploads in an S3-compatible store (moto's server, a real process): the API puts and deletes the
objects; another host reads them through its own sha256-keyed copies, verified, never trusting a path."""

import hashlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings, get_settings
from app.db import session_scope
from app.files.objects import UploadCache
from app.files.refs import TenantFileResolver, file_resolver
from app.main import create_app
from app.models import File
from app.training import TrainingError
from tests.s3 import CREDENTIALS, moto_s3, object_gets

pytestmark = pytest.mark.slow
BUCKET = "distillery-uploads"
CSV = b"bill,flipper,species\n39.1,181,Adelie\n46.5,210,Gentoo\n"
OTHER_CSV = b"bill,flipper,species\n41.0,190,Adelie\n50.2,221,Gentoo\n"


@pytest.fixture
def s3(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    """The settings with uploads in a private moto bucket, and the server's request log."""
    log = tmp_path / "moto.log"
    for key, value in {**CREDENTIALS, "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(key, value)
    with moto_s3(bucket=BUCKET, log=log) as endpoint:
        for key, value in {"STORAGE_BACKEND": "s3", "S3_BUCKET": BUCKET, "S3_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(f"DISTILLERY_{key}", value)
        get_settings.cache_clear()
        yield get_settings(), log


def _upload(client: TestClient, auth: dict, content: bytes, name: str = "penguins.csv") -> dict:
    r = client.post("/v1/files", headers=auth, data={"purpose": "dataset"}, files={"file": (name, content)})
    assert r.status_code == 201, r.text
    return r.json()


def _tenant_id(settings: Settings, file_id: str) -> str:
    with session_scope(settings.resolved_database_url) as db:
        return db.get(File, file_id).tenant_id


def _bucket(settings: Settings):  # a boto3 S3 client
    import boto3

    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_uploads_go_to_the_store_and_deletion_removes_the_object(s3: tuple[Settings, Path], auth: dict) -> None:
    settings, _log = s3
    client = TestClient(create_app(), raise_server_exceptions=False)
    first, twin = _upload(client, auth, CSV), _upload(client, auth, CSV, "again.csv")  # same bytes, two files
    tenant = _tenant_id(settings, first["id"])
    bucket = _bucket(settings)
    for body in (first, twin):
        obj = bucket.get_object(Bucket=BUCKET, Key=f"files/{tenant}/{body['id']}")
        assert obj["Body"].read() == CSV and obj["Metadata"]["sha256"] == hashlib.sha256(CSV).hexdigest()
    assert not (settings.files_dir / tenant).exists()  # nothing on the API's files volume
    cache = UploadCache.for_settings(settings)
    assert cache.entries() == [first["sha256"]]  # one copy for the validator, shared by both files

    assert client.delete(f"/v1/files/{first['id']}", headers=auth).status_code == 204
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == [f"files/{tenant}/{twin['id']}"]
    assert cache.entries() == [first["sha256"]]  # the twin still needs it
    assert client.delete(f"/v1/files/{twin['id']}", headers=auth).status_code == 204
    assert bucket.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0 and cache.entries() == []


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_store_that_fails_keeps_nothing_and_says_so(s3: tuple[Settings, Path], auth: dict,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _log = s3
    client = TestClient(create_app(), raise_server_exceptions=False)
    kept = _upload(client, auth, CSV)
    monkeypatch.setenv("DISTILLERY_S3_BUCKET", "no-such-bucket")  # every request to it fails (NoSuchBucket)
    get_settings.cache_clear()
    r = client.post("/v1/files", headers=auth, data={"purpose": "dataset"}, files={"file": ("b.csv", OTHER_CSV)})
    assert r.status_code == 503 and "nothing was kept" in r.json()["detail"]
    assert [f["id"] for f in client.get("/v1/files", headers=auth).json()["data"]] == [kept["id"]]
    assert not list((settings.files_dir / ".incoming").glob("*"))
    assert UploadCache.for_settings(get_settings()).entries() == [kept["sha256"]]
    r = client.delete(f"/v1/files/{kept['id']}", headers=auth)
    assert r.status_code == 503 and "the file is kept" in r.json()["detail"]
    assert client.get(f"/v1/files/{kept['id']}", headers=auth).status_code == 200


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_another_host_reads_uploads_through_verified_copies(s3: tuple[Settings, Path], auth: dict,
                                                            other_auth: dict, tmp_path: Path) -> None:
    settings, log = s3
    client = TestClient(create_app(), raise_server_exceptions=False)
    mine, theirs = _upload(client, auth, CSV), _upload(client, other_auth, OTHER_CSV)
    tenant = _tenant_id(settings, mine["id"])
    key = f"files/{tenant}/{mine['id']}"
    local = settings.model_copy(update={"storage_backend": "local"})
    assert isinstance(file_resolver(settings=local, tenant_id=tenant, spec={}), TenantFileResolver)

    host = settings.model_copy(update={"data_dir": tmp_path / "second-host"})  # shares no directory with the API
    spec = {"dataset": {"file": mine["id"]}, "transfer_set": {"file": theirs["id"]}}
    resolver = file_resolver(settings=host, tenant_id=tenant, spec=spec)
    path = resolver.resolve(mine["id"])
    assert path == (tmp_path / "second-host" / "file-cache" / mine["sha256"]).resolve()
    assert path.read_bytes() == CSV and object_gets(log, bucket=BUCKET, key=key) == 1
    assert pickle.loads(pickle.dumps(resolver)).resolve(mine["id"]) == path  # as the validator and DDP ranks get it
    assert file_resolver(settings=host, tenant_id=tenant, spec=spec).resolve(mine["id"]) == path  # the next job
    assert object_gets(log, bucket=BUCKET, key=key) == 1  # read from the copy, not downloaded again
    for ref in (theirs["id"], "../../etc/passwd", "file_unknown"):  # another tenant's id; a path; nothing
        with pytest.raises(TrainingError) as err:
            resolver.resolve(ref)
        assert err.value.code == "file_not_found"

    tampered = _upload(client, auth, OTHER_CSV, "tampered.csv")
    tampered_key = f"files/{tenant}/{tampered['id']}"
    spec = {"dataset": {"file": tampered["id"]}}
    for replacement, why in ((OTHER_CSV.replace(b"Gentoo", b"Adelie"), f"recorded at upload is {tampered['sha256']}"),
                             (OTHER_CSV + b"1,2,Adelie\n", "holds more than the 53 bytes recorded")):
        _bucket(settings).put_object(Bucket=BUCKET, Key=tampered_key, Body=replacement)
        with pytest.raises(TrainingError) as err:
            file_resolver(settings=host, tenant_id=tenant, spec=spec).resolve(tampered["id"])
        assert err.value.code == "file_corrupt" and why in err.value.message
        assert "upload the file again" in err.value.message
    cache_dir = tmp_path / "second-host" / "file-cache"
    assert sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")) == [mine["sha256"]]

    _bucket(settings).delete_object(Bucket=BUCKET, Key=tampered_key)
    with pytest.raises(TrainingError) as err:
        file_resolver(settings=host, tenant_id=tenant, spec=spec).resolve(tampered["id"])
    assert err.value.code == "file_not_found" and "not in the object store" in err.value.message
    down = host.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9"})  # nothing listens there
    with pytest.raises(TrainingError) as err:
        file_resolver(settings=down, tenant_id=tenant, spec=spec).resolve(tampered["id"])
    assert err.value.code == "storage_unavailable"

    assert client.delete(f"/v1/files/{mine['id']}", headers=auth).status_code == 204
    assert path.exists()  # this host learns of the deletion at its next job ...
    file_resolver(settings=host, tenant_id=tenant, spec={})
    assert not path.exists()  # ... and drops its copy
