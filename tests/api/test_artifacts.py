"""Results and downloads of a job that really ran: Range, If-Range, HEAD, ETag = sha256."""

import hashlib

from fastapi.testclient import TestClient

from app.config import Settings
from worker.tasks import execute_job


def _finished_job(client: TestClient, auth: dict, spec: dict, settings: Settings) -> str:
    job_id = client.post("/v1/jobs", json=spec, headers=auth).json()["id"]
    assert execute_job(job_id, settings=settings) == "succeeded"
    return job_id


def test_results_and_artifact_listing(client: TestClient, auth: dict, spec: dict, settings: Settings) -> None:
    job_id = _finished_job(client, auth, spec, settings)
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["error"] is None
    results = client.get(f"/v1/jobs/{job_id}/results", headers=auth).json()
    assert results["job_id"] == job_id and results["spec_sha256"] == job["spec_sha256"]
    listing = client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth).json()
    by_name = {a["name"]: a for a in listing}
    assert by_name["results.json"]["media_type"] == "application/json"
    body = client.get(f"/v1/jobs/{job_id}/artifacts/student.safetensors", headers=auth)
    assert body.status_code == 200
    assert hashlib.sha256(body.content).hexdigest() == by_name["student.safetensors"]["sha256"]
    assert len(body.content) == by_name["student.safetensors"]["size"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts/nope.bin", headers=auth).status_code == 404
    # listed, but its file left the local store: a 404 that says so, not a 500 or an empty body
    (settings.resolved_artifact_dir / job_id / "metrics.csv").unlink()
    gone = client.get(f"/v1/jobs/{job_id}/artifacts/metrics.csv", headers=auth)
    assert gone.status_code == 404 and "missing from the store" in gone.json()["detail"]


def test_range_if_range_head_and_etag(client: TestClient, auth: dict, spec: dict, settings: Settings) -> None:
    job_id = _finished_job(client, auth, spec, settings)
    url = f"/v1/jobs/{job_id}/artifacts/student.safetensors"
    full = client.get(url, headers=auth)
    etag = full.headers["etag"]
    assert etag == f'"{hashlib.sha256(full.content).hexdigest()}"'
    part = client.get(url, headers={**auth, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == full.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(full.content)}"
    same = client.get(url, headers={**auth, "Range": "bytes=0-3", "If-Range": etag})
    assert same.status_code == 206 and same.content == full.content[:4]
    stale = client.get(url, headers={**auth, "Range": "bytes=0-3", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == full.content
    head = client.head(url, headers=auth)
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
    assert int(head.headers["content-length"]) == len(full.content)
    beyond = client.get(url, headers={**auth, "Range": f"bytes={len(full.content) + 5}-"})
    assert beyond.status_code == 416

