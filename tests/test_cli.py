"""The `distillery` command in subprocesses, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.auth import authenticate, create_api_key
from app.config import Settings
from app.db import session_scope
from tests.conftest import tiny_spec
from tests.procs import api_argv, env_for, free_port, running, wait_http


def _run(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_train_runs_a_spec_without_a_server(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec(export=["safetensors", "onnx"])))
    done = _run(["train", str(spec), "--out", str(tmp_path / "out")], {}, tmp_path)
    assert done.returncode == 0, done.stderr
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"student.safetensors", "student.json", "student.onnx", "results.json", "metrics.csv",
            "tensorboard.zip"} <= names
    assert "teacher vs student vs baseline" in done.stdout


def test_train_refuses_an_invalid_spec_with_the_field(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec(training={"epochs": 0})))
    done = _run(["train", str(spec), "--out", str(tmp_path / "out")], {}, tmp_path)
    assert done.returncode == 2 and "epochs" in done.stdout


def test_migrate_then_keys_create_prints_a_working_key(tmp_path: Path) -> None:
    env = {"DISTILLERY_DATA_DIR": str(tmp_path / "data")}
    assert _run(["migrate"], env, tmp_path).returncode == 0
    done = _run(["keys", "create", "acme"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    with session_scope(f"sqlite:///{(tmp_path / 'data' / 'distillery.db').resolve()}") as db:
        tenant = authenticate(db=db, plain_key=key)
        assert tenant is not None and tenant.name == "acme"


def test_client_commands_explain_an_unreachable_server(tmp_path: Path) -> None:
    done = _run(["status", "job_x", "--url", "http://127.0.0.1:9", "--api-key", "dk_x"], {}, tmp_path)
    assert done.returncode == 1 and "cannot reach" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_client_commands_print_the_typed_answers(settings: Settings, tmp_path: Path) -> None:
    with session_scope(settings.resolved_database_url) as db:
        key = create_api_key(db=db, tenant_name="acme")[1]
    port = free_port()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec()))
    server = ["--url", f"http://127.0.0.1:{port}", "--api-key", key]
    with running(api_argv(port), env=env_for(settings), log=tmp_path / "api.log"):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        checked = _run(["validate", str(spec), *server], {}, tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "valid" in checked.stdout and "student:" in checked.stdout
        done = _run(["submit", str(spec), *server], {}, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        job_id = done.stdout.strip().splitlines()[-1]
        assert job_id.startswith("job_")
        shown = _run(["status", job_id, *server], {}, tmp_path)
        assert json.loads(shown.stdout)["id"] == job_id
        assert f"job {job_id}: cancelled" in _run(["cancel", job_id, *server], {}, tmp_path).stdout
        listed = _run(["events", job_id, *server], {}, tmp_path).stdout
        assert "queued" in listed and "cancelled" in listed
        data = tmp_path / "transfer.npz"
        np.savez(data, x=np.zeros((5, 3), dtype="float32"))
        uploaded = _run(["files", "upload", str(data), "--purpose", "transfer_set", *server], {}, tmp_path)
        assert uploaded.returncode == 0 and "transfer_set" in uploaded.stdout
        file_id = uploaded.stdout.split()[0]
        assert file_id in _run(["files", "list", *server], {}, tmp_path).stdout
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(tiny_spec(training={"epochs": 0})))
        refused = _run(["submit", str(bad), *server], {}, tmp_path)
        assert refused.returncode == 1 and "body.training.epochs" in refused.stdout
