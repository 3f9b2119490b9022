"""Job routes against real databases (SQLite and PostgreSQL) and real brokers."""

from typing import Any

from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"


def test_create_stores_defaults_and_queues(client: TestClient, auth: dict, spec: dict) -> None:
    r = client.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["attempt"] == 0
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    # defaults the request left out are written back into the stored spec
    assert "weighting" in job["spec"] and job["spec"]["weighting"]["method"] == "equal"
    assert len(job["spec_sha256"]) == 64
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()
    assert [e["kind"] for e in events["data"]] == ["queued"] and events["data"][0]["seq"] == 1


def test_unauthenticated_and_bad_key_are_401_problems(client: TestClient, spec: dict) -> None:
    for headers in ({}, {"Authorization": "Bearer dk_nope"}, {"Authorization": "Basic abc"}):
        r = client.post("/v1/jobs", json=spec, headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["code"] == "unauthorized"


def test_invalid_spec_is_422_with_field_paths(client: TestClient, auth: dict, spec: dict) -> None:
    spec["training"]["epochs"] = -1
    spec["distillation"]["temperature"] = 0
    r = client.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith(PROBLEM)
    fields = {e["field"] for e in r.json()["errors"]}
    assert "body.training.epochs" in fields and "body.distillation.temperature" in fields


def test_unknown_task_in_teacher_names_the_field(client: TestClient, auth: dict, spec: dict) -> None:
    spec["teachers"][0]["tasks"].append("colour")
    r = client.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 422
    body = r.json()
    assert "colour" in body["detail"]
    assert any(e["field"].startswith("body") for e in body["errors"])


def test_idempotency_key_same_body_same_job_other_body_422(client: TestClient, auth: dict, spec: dict) -> None:
    headers = {**auth, "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", json=spec, headers=headers)
    again = client.post("/v1/jobs", json=spec, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    changed = {**spec, "name": "something-else"}
    r = client.post("/v1/jobs", json=changed, headers=headers)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert len(client.get("/v1/jobs", headers=auth).json()["data"]) == 1


def test_list_filters_and_paginates(client: TestClient, auth: dict, spec: dict) -> None:
    ids = [client.post("/v1/jobs", json={**spec, "name": f"j{i}"}, headers=auth).json()["id"] for i in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    page = client.get("/v1/jobs", params={"limit": 2}, headers=auth).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = client.get("/v1/jobs", params={"limit": 10, "after": page["data"][-1]["id"]}, headers=auth).json()
    assert [j["id"] for j in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}, headers=auth).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/v1/jobs", params={"status": "bogus"}, headers=auth).status_code == 422
    assert client.get("/v1/jobs", params={"after": "job_missing"}, headers=auth).status_code == 422


def test_cancel_queued_job_then_conflict(client: TestClient, auth: dict, spec: dict) -> None:
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    kinds = [e["kind"] for e in client.get(f"/v1/jobs/{job_id}/events", headers=auth).json()["data"]]
    assert kinds == ["queued", "cancelled"]


def test_other_tenant_sees_404_everywhere(client: TestClient, auth: dict, other_auth: dict, spec: dict) -> None:
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    for method, path in [("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/results"),
                         ("GET", "/artifacts"), ("GET", "/artifacts/results.json")]:
        r = client.request(method, f"/v1/jobs/{job_id}{path}", headers=other_auth)
        assert r.status_code == 404, (method, path, r.status_code)
        assert r.headers["content-type"].startswith(PROBLEM)
    assert client.get("/v1/jobs", headers=other_auth).json()["data"] == []


def test_results_before_finish_is_409(client: TestClient, auth: dict, spec: dict) -> None:
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/results", headers=auth)
    assert r.status_code == 409 and "no results" in r.json()["detail"]


def test_events_paginate_by_sequence(client: TestClient, auth: dict, spec: dict, settings: Any) -> None:
    from app.db import session_scope
    from app.services.events import add_event

    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    with session_scope(settings.resolved_database_url) as db:
        for i in range(5):
            add_event(db=db, job_id=job_id, kind="epoch", data={"epoch": i})
        db.commit()
    first = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 3}, headers=auth).json()
    assert [e["seq"] for e in first["data"]] == [1, 2, 3] and first["has_more"]
    rest = client.get(f"/v1/jobs/{job_id}/events", params={"after": 3}, headers=auth).json()
    assert [e["seq"] for e in rest["data"]] == [4, 5, 6] and not rest["has_more"]


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_openapi_documents_problem_responses(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]
    assert "404" in op and "application/problem+json" in op["404"]["content"]
    assert "Problem" in doc["components"]["schemas"]
    assert client.get("/docs").status_code == 200
