"""TorchScript teachers over HTTP: refused unless DISTILLERY_ALLOW_TORCHSCRIPT is on."""

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from app.config import Settings


class Teacher(nn.Module):
    def __init__(self, width: int = 10) -> None:
        super().__init__()
        self.trunk = nn.Linear(64, 8)
        self.digit, self.parity, self.large = nn.Linear(8, width), nn.Linear(8, 2), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.trunk(x.flatten(1)))  # (batch, 8)
        return {"digit": self.digit(h), "parity": self.parity(h), "large": self.large(h)}


def _archive(tmp_path: Path, width: int = 10) -> bytes:
    torch.jit.save(torch.jit.script(Teacher(width)), str(tmp_path / f"t{width}.pt"))
    return (tmp_path / f"t{width}.pt").read_bytes()


def _upload(client: TestClient, auth: dict, data: bytes) -> object:
    return client.post("/v1/files", headers=auth, data={"purpose": "teacher_torchscript"},
                       files={"file": ("t.pt", data)})


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_off_by_default_upload_and_spec_are_refused(client: TestClient, auth: dict, spec: dict,
                                                    settings: Settings, tmp_path: Path) -> None:
    assert settings.allow_torchscript is False
    r = _upload(client, auth, _archive(tmp_path))
    assert r.status_code == 400 and "DISTILLERY_ALLOW_TORCHSCRIPT" in r.json()["detail"]
    assert "runs the code" in r.json()["detail"] and r.json()["errors"][0]["field"] == "body.purpose"
    spec["teachers"][0]["source"] = {"torchscript": {"file": "file_whatever"}}
    for path in ("/v1/jobs", "/v1/jobs/validate"):
        r = client.post(path, json=spec, headers=auth)
        assert r.status_code == 422, r.text
        assert "DISTILLERY_ALLOW_TORCHSCRIPT" in r.json()["detail"]
        assert r.json()["errors"][0]["field"] == "body.teachers[0].source.torchscript"
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_on_uploads_are_checked_and_the_dry_run_loads_the_module(client: TestClient, auth: dict, spec: dict,
                                                                 settings: Settings, tmp_path: Path) -> None:
    settings.allow_torchscript = True
    try:
        torch.save(Teacher().state_dict(), tmp_path / "ckpt.pt")  # a pickle checkpoint stays refused
        r = _upload(client, auth, (tmp_path / "ckpt.pt").read_bytes())
        assert r.status_code == 400 and "pickle" in r.json()["detail"]
        good = _upload(client, auth, _archive(tmp_path))
        assert good.status_code == 201, good.text
        assert good.json()["purpose"] == "teacher_torchscript" and good.json()["meta"]["format"] == "torchscript"
        wrong = _upload(client, auth, _archive(tmp_path, width=7)).json()["id"]
        spec["teachers"][0]["source"] = {"torchscript": {"file": good.json()["id"]}}
        checked = client.post("/v1/jobs/validate", json=spec, headers=auth)
        assert checked.status_code == 200, checked.text
        assert checked.json()["summary"]["params"]["teachers"]["t"] == sum(p.numel() for p in Teacher().parameters())
        assert client.post("/v1/jobs", json=spec, headers=auth).status_code == 201
        spec["teachers"][0]["source"] = {"torchscript": {"file": wrong}}
        r = client.post("/v1/jobs", json=spec, headers=auth)
        assert r.status_code == 422 and "width 7" in r.json()["detail"]
        assert r.json()["errors"][0]["field"] == "body.teachers[0].source"
    finally:
        settings.allow_torchscript = False
