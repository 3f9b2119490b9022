"""A new user's path over real HTTP: submit, poll, results, download — both deployments."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.client import Client
from app.config import Settings
from app.training.export import load_student
from tests.conftest import tiny_spec
from tests.procs import api_argv, env_for, free_port, running, wait_http, wait_until, worker_argv

pytestmark = pytest.mark.slow


def _walk_through(base_url: str, api_key: str, out: Path) -> None:
    with Client(base_url, api_key) as client:
        job = client.submit(tiny_spec(export=["safetensors", "onnx"]))
        assert job.status == "queued"
        done = client.wait(job.id, poll=0.5, timeout=180)
        assert done.status == "succeeded", done
        assert done.progress == 1.0 and done.metrics["stage"] == "baseline"
        results = client.results(job.id)
        for row in results["tasks"].values():
            assert {"teacher", "student", "baseline"} <= set(row)
        listing = {a.name: a for a in client.artifacts(job.id)}
        assert {"student.safetensors", "student.json", "student.onnx", "results.json", "metrics.csv"} <= set(listing)
        client.download_all(job.id, out)
    for name, meta in listing.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == meta.sha256
    student = load_student(out)
    logits = student(torch.zeros(4, 64))
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"digit": (4, 10), "parity": (4, 2), "large": (4, 1)}


@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_postgres_redis_uvicorn_and_celery_worker(settings: Settings, tmp_path: Path) -> None:
    from app.auth import create_api_key
    from app.db import session_scope

    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="e2e")[1]
    port = free_port()
    env = env_for(settings)
    with running(api_argv(port), env=env, log=tmp_path / "api.log"), \
            running(worker_argv("e2e"), env=env, log=tmp_path / "worker.log"):
        wait_http(f"http://127.0.0.1:{port}/readyz")
        _walk_through(f"http://127.0.0.1:{port}", key, tmp_path / "download")


def test_embedded_distillery_up(tmp_path: Path) -> None:
    """`distillery up` alone: SQLite, filesystem broker, auto-migrate, a dev key on first start."""
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update({"DISTILLERY_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"})
    argv = [sys.executable, "-m", "app.cli", "up", "--port", str(port)]
    with running(argv, env=env, log=tmp_path / "up.log") as up:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=60)
        key = (data / "dev-api-key").read_text().strip()
        assert key in up.output()
        _walk_through(f"http://127.0.0.1:{port}", key, tmp_path / "download")
        _cli_walk_through(f"http://127.0.0.1:{port}", key, tmp_path)
        workers = _pids_with(f"distillery-{up.popen.pid}@")
        assert workers, "`up` started no worker"
    assert (data / "distillery.db").exists()
    assert _pids_with(f"distillery-{up.popen.pid}@") == []  # `up` stopped its worker: no orphan


def _cli_walk_through(url: str, key: str, tmp_path: Path) -> None:
    """`distillery submit --wait`, `status`, `download`, and a refused `cancel` of an ended job."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec()))
    env = {**os.environ, "DISTILLERY_URL": url, "DISTILLERY_API_KEY": key}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True,
                              text=True, timeout=240, cwd=tmp_path)

    checked = cli("validate", str(spec))
    assert checked.returncode == 0 and "valid" in checked.stdout and "student:" not in checked.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(tiny_spec(training={"epochs": 0})))
    refused_spec = cli("validate", str(bad))
    assert refused_spec.returncode == 1 and "body.training.epochs" in refused_spec.stdout
    submitted = cli("submit", str(spec), "--wait")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "succeeded" in submitted.stdout and "teacher vs student vs baseline" in submitted.stdout
    job_id = submitted.stdout.split("job ", 1)[1].split()[0]
    assert json.loads(cli("status", job_id).stdout)["status"] == "succeeded"
    downloaded = cli("download", job_id, "--out", str(tmp_path / "cli-download"))
    assert downloaded.returncode == 0 and "sha256 ok" in downloaded.stdout
    assert (tmp_path / "cli-download" / "student.safetensors").is_file()
    refused = cli("cancel", job_id)
    assert refused.returncode == 1 and "409 conflict" in refused.stdout
    followed = cli("events", job_id, "--follow")
    assert followed.returncode == 0 and followed.stdout.strip().splitlines()[-1].split()[1] == "succeeded"
    np.savez(tmp_path / "inputs.npz", x=np.zeros((8, 64), dtype="float32"))
    uploaded = cli("files", "upload", str(tmp_path / "inputs.npz"), "--purpose", "transfer_set")
    assert uploaded.returncode == 0 and uploaded.stdout.startswith("file_")
    assert uploaded.stdout.split()[0] in cli("files", "list").stdout


def _pids_with(fragment: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmdline:
                pids.append(int(entry.name))
    return pids
