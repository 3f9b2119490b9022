"""The `distillery` command in subprocesses, as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from app.auth import authenticate
from app.db import session_scope
from tests.conftest import tiny_spec


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
    assert {"student.safetensors", "student.json", "student.onnx", "results.json", "metrics.csv"} <= names
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
