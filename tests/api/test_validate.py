"""POST /v1/jobs/validate: a dry run that stores nothing."""

import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import tiny_spec


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_validate_summarises_without_queueing(client: TestClient, auth: dict) -> None:
    r = client.post("/v1/jobs/validate", json=tiny_spec(), headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    summary = body["summary"]
    assert summary["params"]["student"] > 0 and summary["params"]["teachers"]["t"] > summary["params"]["student"]
    assert summary["compression_ratio"] == pytest.approx(summary["params"]["teacher"] / summary["params"]["student"], rel=0.01)
    assert [s["name"] for s in summary["stages"]] == ["teacher:t", "student", "baseline"]
    assert summary["stages"][1]["steps_per_epoch"] == -(-summary["dataset"]["train_rows"] // 128)
    assert summary["teacher_cache_bytes_estimate"] > 0 and body["spec"]["weighting"]["method"] == "equal"
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_validate_runs_an_uploaded_onnx_teacher_and_reports_a_bad_one(client: TestClient, auth: dict,
                                                                      tmp_path) -> None:  # noqa: ANN001
    class Wrong(torch.nn.Module):  # gives 7 digit logits where the task has 10 classes
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            flat = x.flatten(1)
            return flat[:, :7], flat[:, :2], flat[:, :1]

    path = tmp_path / "t.onnx"
    torch.onnx.export(Wrong(), (torch.zeros(1, 64),), str(path), input_names=["x"],
                      output_names=["digit", "parity", "large"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    file_id = client.post("/v1/files", headers=auth, data={"purpose": "teacher_onnx"},
                          files={"file": ("t.onnx", path.read_bytes())}).json()["id"]
    spec = tiny_spec()
    spec["teachers"][0]["source"] = {"onnx": {"file": file_id}}
    r = client.post("/v1/jobs/validate", json=spec, headers=auth)
    assert r.status_code == 422, r.text
    assert "digit" in r.json()["detail"] and "10" in r.json()["detail"]
