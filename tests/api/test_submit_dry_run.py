"""POST /v1/jobs dry-runs the spec in the validator process before it stores a job."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.services import validator

ROOT = Path(__file__).resolve().parents[2]


def _wrong_onnx_teacher(client: TestClient, auth: dict, tmp_path: Path) -> str:
    class Wrong(torch.nn.Module):  # 7 digit logits where the task has 10 classes
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            flat = x.flatten(1)  # (batch, 64)
            return flat[:, :7], flat[:, :2], flat[:, :1]

    path = tmp_path / "t.onnx"
    torch.onnx.export(Wrong(), (torch.zeros(1, 64),), str(path), input_names=["x"],
                      output_names=["digit", "parity", "large"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    r = client.post("/v1/files", headers=auth, data={"purpose": "teacher_onnx"},
                    files={"file": ("t.onnx", path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_submit_refuses_a_spec_the_dry_run_rejects_and_stores_nothing(client: TestClient, auth: dict, spec: dict,
                                                                       tmp_path: Path) -> None:
    spec["teachers"][0]["source"] = {"onnx": {"file": _wrong_onnx_teacher(client, auth, tmp_path)}}
    r = client.post("/v1/jobs", json=spec, headers={**auth, "Idempotency-Key": "bad-1"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert "digit" in body["detail"] and "10" in body["detail"]
    assert body["errors"] == [{"field": "body.teachers[0].source", "message": body["detail"],
                               "type": "teacher_mismatch"}]
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []
    # the key was not used up by the refused request: a fixed spec under it is a new job
    fixed = client.post("/v1/jobs", json={**spec, "teachers": [{**spec["teachers"][0], "source": {
        "train": {"arch": {"type": "mlp", "hidden": [64]}, "epochs": 2}}}]},
        headers={**auth, "Idempotency-Key": "bad-1"})
    assert fixed.status_code == 201, fixed.text


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_replay_is_not_dry_run_again_and_a_stuck_dry_run_is_503(client: TestClient, auth: dict, spec: dict,
                                                                 settings: Settings) -> None:
    headers = {**auth, "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", json=spec, headers=headers)
    assert first.status_code == 201, first.text
    # Every validator process busy for 30 s, and a 0.5 s limit: the next dry run is stuck. (A 1e-6 s
    # limit alone was flaky on a loaded machine: a ~10 ms dry run of a cached built-in could finish
    # before the API thread got to wait for it.)
    pool = validator._get_pool(settings)
    for _ in range(settings.validator_processes):
        pool.submit(time.sleep, 30)
    settings.validator_timeout_seconds = 0.5
    try:
        again = client.post("/v1/jobs", json=spec, headers=headers)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        stuck = client.post("/v1/jobs", json={**spec, "name": "other"}, headers=auth)
        assert stuck.status_code == 503 and "dry run took longer" in stuck.json()["detail"]
        assert len(client.get("/v1/jobs", headers=auth).json()["data"]) == 1
    finally:
        settings.validator_timeout_seconds = 60.0
    # the killed validator pool is replaced by the next request
    assert client.post("/v1/jobs", json={**spec, "name": "other"}, headers=auth).status_code == 201


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_submit_and_validate_keep_torch_out_of_the_api_process(settings: Settings, spec: dict) -> None:
    """In a fresh interpreter (this one has torch from the tests), a submit and a validate load no torch."""
    code = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from app.db import session_scope\n"
        "from app.main import create_app\n"
        "from app.auth import create_api_key\n"
        "spec = json.loads(sys.argv[2])\n"
        "with session_scope(sys.argv[1]) as db:\n"
        "    key = create_api_key(db=db, tenant_name='acme')[1]\n"
        "h = {'Authorization': f'Bearer {key}'}\n"
        "assert 'torch' not in sys.modules\n"
        "with TestClient(create_app()) as c:\n"
        "    assert c.post('/v1/jobs/validate', json=spec, headers=h).status_code == 200\n"
        "    assert c.post('/v1/jobs', json=spec, headers=h).status_code == 201\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, settings.resolved_database_url, json.dumps(spec)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
