"""A finalise job (`trial.mode: finalise`) names the light trial whose trained state it loads:
submit and validate refuse one that is not the tenant's own finished light trial, naming the
field, and store nothing (the worker reads only the tenant's own state; this fails earlier)."""

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import session_scope
from app.models import Artifact
from app.training.spec_trial import TRIAL_STATE_NAME


def _job_with_state(client: TestClient, headers: dict, spec: dict, settings: Settings) -> str:
    """Submit a job for the key's tenant and give it a trial-state.pt artifact row."""
    r = client.post("/v1/jobs", headers=headers, json=spec)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    with session_scope(settings.resolved_database_url) as db:
        db.add(Artifact(job_id=job_id, name=TRIAL_STATE_NAME, path=f"{job_id}/{TRIAL_STATE_NAME}", size=1,
                        sha256="0" * 64, media_type="application/octet-stream"))
        db.commit()
    return job_id


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_a_finalise_job_must_name_one_of_the_tenants_light_trials(
        client: TestClient, auth: dict, other_auth: dict, spec: dict, settings: Settings) -> None:
    theirs = _job_with_state(client, other_auth, spec, settings)
    mine = client.post("/v1/jobs", headers=auth, json=spec).json()["id"]  # no trial state
    for source in (theirs, mine, "job_" + "0" * 32):
        asking = {**spec, "trial": {"mode": "finalise", "from_job": source}}
        for path in ("/v1/jobs/validate", "/v1/jobs"):
            r = client.post(path, headers=auth, json=asking)
            assert r.status_code == 422, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            error = r.json()["errors"][0]
            assert error["field"] == "body.trial.from_job" and error["type"] == "trial_state_missing"
            assert source in error["message"]
    assert [j["id"] for j in client.get("/v1/jobs", headers=auth).json()["data"]] == [mine]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_finalise_job_of_the_tenants_own_light_trial_passes_the_check(
        client: TestClient, auth: dict, spec: dict, settings: Settings) -> None:
    source = _job_with_state(client, auth, spec, settings)
    r = client.post("/v1/jobs", headers=auth, json={**spec, "trial": {"mode": "finalise", "from_job": source}})
    assert r.status_code == 201, r.text
