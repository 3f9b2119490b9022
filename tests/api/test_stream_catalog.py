"""SSE event stream (resume with Last-Event-ID) and the catalog."""

from fastapi.testclient import TestClient

from app.config import Settings
from worker.tasks import execute_job


def _parse_sse(text: str) -> list[dict]:
    messages = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "id" in fields:
            messages.append(fields)
    return messages


def test_stream_sends_every_event_then_ends_and_resumes(client: TestClient, auth: dict, spec: dict,
                                                        settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    assert execute_job(job_id, settings=settings) == "succeeded"
    all_events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}, headers=auth).json()["data"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=auth) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        messages = _parse_sse(r.read().decode())
    assert [int(m["id"]) for m in messages] == [e["seq"] for e in all_events]
    assert messages[-1]["event"] == "succeeded"
    resumed = client.get(f"/v1/jobs/{job_id}/events/stream", headers={**auth, "Last-Event-ID": "3"})
    assert [int(m["id"]) for m in _parse_sse(resumed.text)] == [e["seq"] for e in all_events if e["seq"] > 3]


def test_catalog_lists_the_engine_registries(client: TestClient, auth: dict) -> None:
    body = client.get("/v1/catalog", headers=auth).json()
    assert "digits-mt" in body["datasets"]
    assert {"datasets", "architectures", "strategies", "weighting_methods"} <= set(body)
    assert client.get("/v1/catalog").status_code == 401
