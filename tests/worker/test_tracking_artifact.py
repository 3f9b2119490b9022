"""A real tiny job run by the worker lists tensorboard.zip through the API, and its event files
hold the same per-epoch numbers as the job's "epoch" events."""

import hashlib
import io
import math
import zipfile
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.auth import create_api_key, get_or_create_tenant
from app.config import Settings
from app.db import session_scope
from app.main import create_app
from app.models import Job, JobEvent
from app.services.jobs import insert_job
from app.training.spec import JobSpec
from app.training.tracking import ARCHIVE_NAME, run_name
from tests.conftest import tiny_spec
from worker.tasks import execute_job


def test_the_api_lists_and_serves_the_tensorboard_archive_of_a_job(settings: Settings, tmp_path: Path):
    with session_scope(settings.resolved_database_url) as db:
        auth = {"Authorization": f"Bearer {create_api_key(db=db, tenant_name='acme')[1]}"}
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        created = client.post("/v1/jobs", json=tiny_spec(), headers=auth)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        assert execute_job(job_id, settings=settings) == "succeeded"
        listing = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth).json()}
        assert listing[ARCHIVE_NAME]["media_type"] == "application/zip"
        body = client.get(f"/v1/jobs/{job_id}/artifacts/{ARCHIVE_NAME}", headers=auth)
        assert body.status_code == 200
        assert hashlib.sha256(body.content).hexdigest() == listing[ARCHIVE_NAME]["sha256"]
        events = client.get(f"/v1/jobs/{job_id}/events?limit=1000", headers=auth).json()["data"]

    zipfile.ZipFile(io.BytesIO(body.content)).extractall(tmp_path / "tb")
    epochs = [e["data"] for e in events if e["kind"] == "epoch"]
    assert {e["stage"] for e in epochs} == {"teacher:t", "student", "baseline"}
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["baseline", "student", "teacher.t"]
    for stage in {e["stage"] for e in epochs}:
        accumulator = EventAccumulator(str(tmp_path / "tb" / run_name(stage)))
        accumulator.Reload()
        seen = [e for e in epochs if e["stage"] == stage]
        total = {s.step: s.value for s in accumulator.Scalars("loss/total")}
        assert total.keys() == {e["epoch"] for e in seen}
        assert all(math.isclose(total[e["epoch"]], e["losses"]["total"], rel_tol=1e-6) for e in seen)
        digit = {s.step: s.value for s in accumulator.Scalars("validation/digit.accuracy")}
        assert all(math.isclose(digit[e["epoch"]], e["metrics"]["digit"], rel_tol=1e-6) for e in seen)


def test_a_spec_asking_for_mlflow_on_a_worker_without_it_fails_before_training(settings: Settings):
    assert settings.mlflow_tracking_uri is None
    spec = tiny_spec(tracking={"mlflow": {"experiment": "nowhere"}})
    with session_scope(settings.resolved_database_url) as db:
        tenant = get_or_create_tenant(db=db, name="acme")
        job_id = insert_job(db=db, tenant=tenant, spec=JobSpec.model_validate(spec),
                            idempotency_key=None)[0].id
    assert execute_job(job_id, settings=settings) == "failed"
    with session_scope(settings.resolved_database_url) as db:
        job = db.get(Job, job_id)
        kinds = [e.kind for e in db.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert job.error_code == "tracking_unavailable" and "DISTILLERY_MLFLOW_TRACKING_URI" in job.error_message
    assert "epoch" not in kinds and "stage_started" not in kinds
