"""Two hosts that share no directory: a real uvicorn and a real Celery worker, each with its own
DISTILLERY_DATA_DIR, meeting only through PostgreSQL, a private Redis and moto's S3 server. An
uploaded CSV dataset and ONNX teacher train a student on the worker's host; the second job reads
the worker's copies (counted as GETs in the S3 server's log); an object changed after its upload
fails its job with `file_corrupt`."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import torch

from app.auth import create_api_key
from app.client import Client
from app.config import Settings, get_settings
from app.db import session_scope
from app.models import File
from tests.conftest import _wipe
from tests.e2e.test_own_data import _fit_teacher, _table
from tests.procs import (
    api_argv,
    env_for,
    free_port,
    redis_server,
    running,
    wait_http,
    wait_until,
    worker_argv,
)
from tests.s3 import CREDENTIALS, moto_s3, object_gets

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")]
BUCKET = "distillery-hosts"


@pytest.fixture
def pg(migrated_urls: dict[str, str]) -> Iterator[str]:
    yield migrated_urls["postgres"]
    _wipe(migrated_urls["postgres"])


def _redis_up(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.exceptions.ConnectionError:
        return False


def _spec(data_id: str, teacher_id: str, seed: int) -> dict:
    return {"name": f"across-hosts-{seed}",
            "dataset": {"file": data_id, "format": "csv", "features": ["f0", "f1", "f2", "f3"], "standardize": False},
            "tasks": [{"name": "band", "kind": "multiclass", "num_classes": 3}, {"name": "positive", "kind": "binary"}],
            "teachers": [{"name": "external", "tasks": ["band", "positive"], "source": {"onnx": {"file": teacher_id}}}],
            "student": {"type": "mlp", "trunk": [16], "head": []},
            "training": {"epochs": 3, "batch_size": 64, "lr": 0.01, "seed": seed},
            "export": ["safetensors"]}


def test_a_worker_on_another_host_reads_uploads_from_the_object_store(pg: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _table()
    frame.to_csv(tmp_path / "data.csv", index=False)
    _table(300).to_csv(tmp_path / "other.csv", index=False)
    torch.onnx.export(_fit_teacher(frame), (torch.zeros(1, 4),), str(tmp_path / "teacher.onnx"), input_names=["x"],
                      output_names=["band", "positive"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    with session_scope(pg) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    port, redis_port = free_port(), free_port()
    redis = redis_server(redis_port, tmp_path / "redis.log")
    moto_log = tmp_path / "moto.log"
    try:
        wait_until(lambda: _redis_up(redis_port), timeout=10, what="private redis")
        with moto_s3(bucket=BUCKET, log=moto_log) as endpoint:
            for name, value in CREDENTIALS.items():
                monkeypatch.setenv(name, value)
            store = {"storage_backend": "s3", "s3_bucket": BUCKET, "s3_endpoint_url": endpoint}
            hosts = {name: Settings(env="test", data_dir=tmp_path / name, database_url=pg,
                                    broker_url=f"redis://127.0.0.1:{redis_port}/0", **store)
                     for name in ("api-host", "worker-host")}
            extra = {**CREDENTIALS, "DISTILLERY_STORAGE_BACKEND": "s3", "DISTILLERY_S3_BUCKET": BUCKET,
                     "DISTILLERY_S3_ENDPOINT_URL": endpoint}
            with running(api_argv(port), env=env_for(hosts["api-host"], **extra), log=tmp_path / "api.log"), \
                    running(worker_argv("far"), env=env_for(hosts["worker-host"], **extra),
                            log=tmp_path / "worker.log"):
                wait_http(f"http://127.0.0.1:{port}/readyz")
                with Client(f"http://127.0.0.1:{port}", key) as client:
                    data = client.upload(tmp_path / "data.csv", purpose="dataset")
                    teacher = client.upload(tmp_path / "teacher.onnx", purpose="teacher_onnx")
                    with session_scope(pg) as db:
                        tenant = db.get(File, data.id).tenant_id
                    keys = {f.id: f"files/{tenant}/{f.id}" for f in (data, teacher)}

                    first = client.wait(client.submit(_spec(data.id, teacher.id, 0)).id, poll=0.5, timeout=240)
                    assert first.status == "succeeded", first
                    assert {object_gets(moto_log, bucket=BUCKET, key=k) for k in keys.values()} == {1}
                    copies = tmp_path / "worker-host" / "file-cache"
                    assert (copies / data.sha256).read_bytes() == (tmp_path / "data.csv").read_bytes()
                    assert (copies / teacher.sha256).read_bytes() == (tmp_path / "teacher.onnx").read_bytes()

                    second = client.wait(client.submit(_spec(data.id, teacher.id, 1)).id, poll=0.5, timeout=240)
                    assert second.status == "succeeded", second
                    # the worker read its copies: still one download of each file, over both jobs
                    assert {object_gets(moto_log, bucket=BUCKET, key=k) for k in keys.values()} == {1}
                    assert client.results(second.id)["tasks"]["band"]["teacher"] > 0.8  # the uploaded teacher ran

                    other = client.upload(tmp_path / "other.csv", purpose="dataset")
                    changed = (tmp_path / "other.csv").read_bytes().replace(b",low,", b",mid,", 1)  # same size: caught by its sha256
                    boto3.client("s3", endpoint_url=endpoint).put_object(
                        Bucket=BUCKET, Key=f"files/{tenant}/{other.id}", Body=changed)
                    # the API validates against its own copy; the worker downloads the changed object
                    bad = client.wait(client.submit(_spec(other.id, teacher.id, 0)).id, poll=0.5, timeout=240)
        assert bad.status == "failed" and bad.error.code == "file_corrupt", bad
        assert other.sha256 in bad.error.message and "upload the file again" in bad.error.message
        assert not (copies / other.sha256).exists()
        assert not (tmp_path / "api-host" / "files" / tenant).exists()  # uploads never landed on the API's volume
        assert not (tmp_path / "worker-host" / "files").exists()
        assert "downloaded" in (tmp_path / "worker.log").read_text()
    finally:
        redis.kill()
        redis.wait(timeout=10)
        get_settings.cache_clear()
