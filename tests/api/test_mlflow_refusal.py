"""A spec asking for MLflow on a server without a tracking URI is refused at submit and validate,
naming the field, and nothing is stored (it used to fail only once a worker ran it)."""

import pytest
from fastapi.testclient import TestClient

from app.config import Settings


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_mlflow_without_a_tracking_server_is_refused_before_anything_is_stored(
        client: TestClient, auth: dict, spec: dict, settings: Settings) -> None:
    assert settings.mlflow_tracking_uri is None
    asking = {**spec, "tracking": {"mlflow": {"experiment": "exp"}}}
    for path in ("/v1/jobs/validate", "/v1/jobs"):
        r = client.post(path, headers=auth, json=asking)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        error = r.json()["errors"][0]
        assert error["field"] == "body.tracking.mlflow" and error["type"] == "mlflow_not_configured"
        assert "DISTILLERY_MLFLOW_TRACKING_URI" in r.json()["detail"]
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []
    # Without the tracking section the same spec goes through.
    assert client.post("/v1/jobs/validate", headers=auth, json=spec).status_code == 200
