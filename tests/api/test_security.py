"""Keys (revocation, admin scope), tenant isolation on every route, rate limits, caps, CORS."""

import pytest
from fastapi.testclient import TestClient

from app.auth import create_api_key
from app.config import Settings, get_settings
from app.db import session_scope
from app.main import create_app
from app.models import Tenant

PROBLEM = "application/problem+json"


def _reconfigure(monkeypatch: pytest.MonkeyPatch, **env: str) -> TestClient:
    for key, value in env.items():
        monkeypatch.setenv(f"DISTILLERY_{key}", value)
    get_settings.cache_clear()
    return TestClient(create_app(), raise_server_exceptions=False)


def _admin(settings: Settings) -> dict[str, str]:
    with session_scope(settings.resolved_database_url) as db:
        return {"Authorization": f"Bearer {create_api_key(db=db, tenant_name='ops', is_admin=True)[1]}"}


def test_revoked_key_stops_working_at_once(client: TestClient, auth: dict, settings: Settings) -> None:
    admin = _admin(settings)
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    keys = client.get("/v1/keys", params={"tenant": "acme"}, headers=admin).json()
    assert len(keys) == 1 and "key" not in keys[0] and keys[0]["revoked_at"] is None
    revoked = client.post(f"/v1/keys/{keys[0]['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    r = client.get("/v1/jobs", headers=auth)
    assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked API key"


def test_key_management_needs_the_admin_scope(client: TestClient, auth: dict, settings: Settings) -> None:
    for method, path in [("GET", "/v1/keys"), ("POST", "/v1/keys/key_x/revoke")]:
        r = client.request(method, path, headers=auth)
        assert r.status_code == 403 and r.headers["content-type"].startswith(PROBLEM)
    r = client.post("/v1/keys", json={"tenant": "acme"}, headers=auth)
    assert r.status_code == 403
    created = client.post("/v1/keys", json={"tenant": "newco", "name": "ci"}, headers=_admin(settings))
    assert created.status_code == 201 and created.json()["key"].startswith("dk_")
    fresh = {"Authorization": f"Bearer {created.json()['key']}"}
    assert client.get("/v1/jobs", headers=fresh).json() == {"data": [], "has_more": False}
    assert client.post("/v1/keys/key_missing/revoke", headers=_admin(settings)).status_code == 404


def test_every_job_route_is_404_for_another_tenant(client: TestClient, auth: dict, other_auth: dict,
                                                  spec: dict) -> None:
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    walked = 0
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        if "{job_id}" not in path:
            continue
        url = path.replace("{job_id}", job_id).replace("{name}", "results.json")
        for method in operations:
            r = client.request(method.upper(), url, headers=other_auth)
            assert r.status_code == 404, (method, path, r.status_code)
            walked += 1
    assert walked >= 8  # get, delete, cancel, events, results, artifacts, download GET and HEAD
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "queued"  # untouched


def test_rate_limit_per_key_is_429_with_retry_after(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                     auth: dict, other_auth: dict) -> None:
    client = _reconfigure(monkeypatch, RATE_LIMIT="5/minute")
    codes = [client.get("/v1/jobs", headers=auth).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    r = client.get("/v1/jobs", headers=auth)
    assert r.json()["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
    assert client.get("/v1/jobs", headers=other_auth).status_code == 200  # another key has its own budget


def test_active_job_cap_is_429(settings: Settings, monkeypatch: pytest.MonkeyPatch, auth: dict, spec: dict) -> None:
    client = _reconfigure(monkeypatch, MAX_ACTIVE_JOBS_PER_TENANT="2")
    ids = [client.post("/v1/jobs", json=spec, headers=auth).json()["id"] for _ in range(2)]
    r = client.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 429 and r.json()["code"] == "too_many_active_jobs" and r.headers["retry-after"]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    assert client.post("/v1/jobs", json=spec, headers=auth).status_code == 201


def test_storage_quota_is_409_and_deleting_jobs_frees_it(client: TestClient, auth: dict, spec: dict,
                                                         settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 409  # still queued
    with session_scope(settings.resolved_database_url) as db:
        db.query(Tenant).filter(Tenant.name == "acme").update({"max_storage_bytes": 0})
        db.commit()
    r = client.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 409 and r.json()["code"] == "storage_quota_exceeded"
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 404


def test_cors_is_off_unless_configured(settings: Settings, monkeypatch: pytest.MonkeyPatch, client: TestClient) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    assert "access-control-allow-origin" not in client.options("/v1/jobs", headers=preflight).headers
    configured = _reconfigure(monkeypatch, CORS_ORIGINS='["https://app.example"]')
    r = configured.options("/v1/jobs", headers=preflight)
    assert r.headers["access-control-allow-origin"] == "https://app.example"
