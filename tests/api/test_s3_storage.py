"""Artifacts in an S3-compatible store (moto's standalone server, a real process): save, list,
download with Range/If-Range/HEAD/ETag, delete."""

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings, get_settings
from app.main import create_app
from tests.procs import free_port, running, wait_http
from worker.tasks import execute_job

pytestmark = pytest.mark.slow
BUCKET = "distillery-test"


@pytest.fixture
def s3_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    import boto3

    port = free_port()
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    env = {"PATH": "/usr/bin:/bin", **creds}
    with running([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                 log=tmp_path / "moto.log"):
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", timeout=30)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        monkeypatch.setenv("DISTILLERY_STORAGE_BACKEND", "s3")
        monkeypatch.setenv("DISTILLERY_S3_BUCKET", BUCKET)
        monkeypatch.setenv("DISTILLERY_S3_ENDPOINT_URL", endpoint)
        get_settings.cache_clear()
        yield get_settings()


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_artifacts_round_trip_through_s3(s3_settings: Settings, auth: dict, spec: dict) -> None:
    import boto3

    client = TestClient(create_app(), raise_server_exceptions=False)
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    assert execute_job(job_id, settings=s3_settings) == "succeeded"
    s3 = boto3.client("s3", endpoint_url=s3_settings.s3_endpoint_url)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert f"artifacts/{job_id}/student.safetensors" in keys
    assert not (s3_settings.resolved_artifact_dir / job_id).exists()  # nothing on local disk

    listing = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth).json()}
    url = f"/v1/jobs/{job_id}/artifacts/student.safetensors"
    full = client.get(url, headers=auth)
    assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == listing["student.safetensors"]["sha256"]
    etag = full.headers["etag"]
    part = client.get(url, headers={**auth, "Range": "bytes=5-14"})
    assert part.status_code == 206 and part.content == full.content[5:15]
    assert part.headers["content-range"] == f"bytes 5-14/{len(full.content)}"
    suffix = client.get(url, headers={**auth, "Range": "bytes=-8"})
    assert suffix.status_code == 206 and suffix.content == full.content[-8:]
    assert client.get(url, headers={**auth, "Range": "bytes=0-3", "If-Range": etag}).status_code == 206
    stale = client.get(url, headers={**auth, "Range": "bytes=0-3", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == full.content
    head = client.head(url, headers=auth)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(full.content)
    beyond = client.get(url, headers={**auth, "Range": f"bytes={len(full.content)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(full.content)}"

    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)  # ended already: 409, the job stays
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 204
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
