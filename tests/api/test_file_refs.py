"""A job may name only the tenant's own uploads, of the right purpose; never a server path."""

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import tiny_spec


def _weights_spec(ref: str) -> dict:
    spec = tiny_spec()
    spec["teachers"][0]["source"] = {"weights": {"file": ref, "arch": {"type": "mlp", "trunk": [64]}}}
    return spec


def _upload_csv(client: TestClient, auth: dict) -> str:
    r = client.post("/v1/files", headers=auth, data={"purpose": "dataset"},
                    files={"file": ("d.csv", b"a,b\n1,2\n")})
    return r.json()["id"]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_server_paths_and_foreign_or_mismatched_files_are_refused(client: TestClient, auth: dict,
                                                                  other_auth: dict) -> None:
    field = "body.teachers[0].source.weights.file"
    for ref in ("/etc/passwd", "../../distillery.db", "file_doesnotexist"):
        r = client.post("/v1/jobs", json=_weights_spec(ref), headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == field and r.json()["errors"][0]["type"] == "unknown_file"
    csv_id = _upload_csv(client, auth)
    r = client.post("/v1/jobs", json=_weights_spec(csv_id), headers=auth)
    assert r.status_code == 422 and r.json()["errors"][0]["type"] == "wrong_purpose"
    theirs = _upload_csv(client, other_auth)
    r = client.post("/v1/jobs", json=_weights_spec(theirs), headers=auth)
    assert r.status_code == 422 and r.json()["errors"][0]["type"] == "unknown_file"
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_transfer_set_file_must_be_a_transfer_set(client: TestClient, auth: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((16, 64), dtype="float32"))
    transfer_id = client.post("/v1/files", headers=auth, data={"purpose": "transfer_set"},
                              files={"file": ("t.npz", buf.getvalue())}).json()["id"]
    spec = tiny_spec(transfer_set={"file": transfer_id})
    assert client.post("/v1/jobs", json=spec, headers=auth).status_code == 201
    spec = tiny_spec(transfer_set={"file": _upload_csv(client, auth)})
    r = client.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.transfer_set.file"
