"""A CPU-only worker pool refuses fp16 before the job is queued, naming training.precision."""

import pytest
from fastapi.testclient import TestClient

from app.config import get_settings
from app.main import create_app
from tests.conftest import tiny_spec


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_fp16_is_refused_on_a_cpu_pool_and_bf16_accepted(settings, auth: dict,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLERY_WORKER_ACCELERATOR", "cpu")
    get_settings.cache_clear()
    fp16 = tiny_spec(training={"epochs": 1, "batch_size": 128, "lr": 0.003, "seed": 0, "precision": "fp16"})
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        for path in ("/v1/jobs/validate", "/v1/jobs"):
            r = client.post(path, json=fp16, headers=auth)
            assert r.status_code == 422, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            error = r.json()["errors"][0]
            assert error["field"] == "body.training.precision" and error["type"] == "precision_unsupported"
            assert "fp16" in r.json()["detail"] and "bf16" in r.json()["detail"]
        assert client.get("/v1/jobs", headers=auth).json()["data"] == []  # nothing was queued
        bf16 = {**fp16, "training": {**fp16["training"], "precision": "bf16"}}
        r = client.post("/v1/jobs/validate", json=bf16, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["spec"]["training"]["precision"] == "bf16"
