"""Webhook endpoints over the real app: the secret shown once, rotation, tenancy, the SSRF guard."""

import base64

import pytest
from fastapi.testclient import TestClient

from app.config import Settings, get_settings
from tests.webhooks.conftest import api_key

ALL_EVENTS = ["job.started", "job.succeeded", "job.failed", "job.cancelled", "job.task_milestone"]


def test_secret_shown_once_rotated_and_scoped_to_the_tenant(api: TestClient, hook_settings: Settings) -> None:
    acme, _ = api_key(hook_settings, "acme")
    globex, _ = api_key(hook_settings, "globex")
    created = api.post("/v1/webhooks", headers=acme,
                       json={"url": "http://127.0.0.1:9/hooks", "event_types": ["job.succeeded", "job.succeeded"]})
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["event_types"] == ["job.succeeded"]
    assert hook["secret"].startswith("whsec_") and len(base64.b64decode(hook["secret"][6:])) == 32
    shown = api.get(f"/v1/webhooks/{hook['id']}", headers=acme).json()
    assert "secret" not in shown and shown["url"] == "http://127.0.0.1:9/hooks"
    assert [h["id"] for h in api.get("/v1/webhooks", headers=acme).json()["data"]] == [hook["id"]]

    # Another tenant sees nothing and can touch nothing.
    assert api.get("/v1/webhooks", headers=globex).json()["data"] == []
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/rotate"), ("GET", "/deliveries"),
                         ("POST", "/deliveries/msg_x/redeliver")):
        response = api.request(method, f"/v1/webhooks/{hook['id']}{path}", headers=globex)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert api.get(f"/v1/webhooks/{hook['id']}", headers=acme).status_code == 200  # still there

    rotated = api.post(f"/v1/webhooks/{hook['id']}/rotate", headers=acme).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != hook["secret"]
    assert rotated["secret_rotated_at"] is not None
    assert api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=acme).json() == {"data": [], "has_more": False}
    assert api.post(f"/v1/webhooks/{hook['id']}/deliveries/msg_nope/redeliver", headers=acme).status_code == 404

    assert api.delete(f"/v1/webhooks/{hook['id']}", headers=acme).status_code == 204
    assert api.get(f"/v1/webhooks/{hook['id']}", headers=acme).status_code == 404
    assert api.get("/v1/webhooks", headers=acme).json()["data"] == []
    assert api.get("/v1/webhooks").status_code == 401


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/x", "http://localhost/x", "http://10.1.2.3/x", "http://192.168.0.10/x",
    "http://172.16.5.5/x", "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/x", "http://[::1]/x",
    "http://[fe80::1]/x", "http://[::ffff:127.0.0.1]/x", "http://100.64.0.1/x", "http://224.0.0.1/x",
    "ftp://example.com/x", "file:///etc/passwd", "http://user:pw@example.com/x", "not a url", "http:///x",
])
def test_private_loopback_link_local_and_non_http_targets_are_refused(
        api: TestClient, hook_settings: Settings, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DISTILLERY_WEBHOOK_ALLOW_PRIVATE", "false")
    get_settings.cache_clear()
    headers, _ = api_key(get_settings(), "acme")
    response = api.post("/v1/webhooks", headers=headers, json={"url": url, "event_types": ALL_EVENTS})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in problem["errors"]] == ["body.url"]
    assert api.get("/v1/webhooks", headers=headers).json()["data"] == []


def test_bad_event_types_name_the_field(api: TestClient, hook_settings: Settings) -> None:
    headers, _ = api_key(hook_settings, "acme")
    for event_types in ([], ["job.exploded"], "job.started"):
        response = api.post("/v1/webhooks", headers=headers, json={"url": "http://127.0.0.1/x", "event_types": event_types})
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"].startswith("body.event_types")
