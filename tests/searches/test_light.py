"""Light trials (spec.trial): a trial job measures validation only; the front's trials are finalised."""

import pytest
import torch
from pydantic import ValidationError
from sqlalchemy import func, select

from app.config import Settings
from app.db import session_scope
from app.models import Artifact, Job, JobEvent, Search, SearchTrial
from app.services import searches_controller as controller
from app.storage import get_store
from app.training import JobSpec
from app.training.spec import spec_sha256
from tests.conftest import tiny_spec
from tests.searches.conftest import queued_jobs, store_search, tiny_goal
from tests.searches.test_controller import _drive
from worker.search import advance_search
from worker.tasks import execute_job

LIGHT_ARTIFACTS = {"results.json", "metrics.csv", "trial-state.pt"}


def _artifacts(db, job_id: str) -> set[str]:
    return set(db.scalars(select(Artifact.name).where(Artifact.job_id == job_id)))


def _stages_started(db, job_id: str) -> list[str]:
    return [e.data["stage"] for e in db.scalars(select(JobEvent).where(
        JobEvent.job_id == job_id, JobEvent.kind == "stage_started").order_by(JobEvent.seq))]


def test_the_trial_section_is_absent_from_an_ordinary_spec_and_finalise_names_its_source() -> None:
    plain = JobSpec.model_validate(tiny_spec())
    assert "trial" not in plain.model_dump(mode="json")  # an ordinary job dumps and hashes as before
    light = JobSpec.model_validate(tiny_spec(trial={"mode": "light"}))
    assert light.trial.latency is False and spec_sha256(light) != spec_sha256(plain)
    for bad in ({"mode": "finalise"}, {"mode": "light", "from_job": "job_" + "0" * 32},
                {"mode": "finalise", "from_job": "../etc"}):
        with pytest.raises(ValidationError):
            JobSpec.model_validate(tiny_spec(trial=bad))


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_front_trials_are_finalised_from_their_light_jobs_and_the_others_are_not(settings: Settings) -> None:
    search_id = store_search(settings, tiny_goal(trials=4, goal={
        "max_params": 3000, "max_latency_us": 1e6,  # a latency constraint: light trials measure latency
        "objectives": [{"metric": "mean_retention", "direction": "maximize"},
                       {"metric": "params", "direction": "minimize"}]}))
    search = _drive(settings, search_id)
    assert search.status == "succeeded", (search.error_code, search.error_message)
    front = search.summary["pareto"]
    with session_scope(settings.resolved_database_url) as db:
        trials = list(db.scalars(select(SearchTrial).where(SearchTrial.search_id == search_id)))
        assert front and len(trials) == 4
        for trial in trials:
            job = db.get(Job, trial.job_id)
            # The light trial: no baseline, no test numbers, no exports, report or TensorBoard archive.
            assert job.spec["trial"] == {"mode": "light", "latency": True, "from_job": None}
            assert _stages_started(db, job.id) in (["teacher:t", "student"], ["student"])
            assert _artifacts(db, job.id) == LIGHT_ARTIFACTS
            results = job.results
            assert results["trial"] == "light" and [s["name"] for s in results["stages"]] == ["teacher:t", "student"]
            assert all(row["student"] is None for row in results["tasks"].values())
            assert all(row["student"] is not None and row["teacher"] is not None
                       for row in results["validation"].values())
            assert results["latency_us_per_sample"]["student"] > 0
            assert trial.measures["mean_retention"] > 0 and trial.measures["latency_us"] > 0
            if trial.number not in front:
                assert trial.final_job_id is None and trial.test is None
                continue
            # A front trial: its finalise job loaded the light job's student (trained nothing) and
            # measured it on test once; its student is downloadable there.
            final = db.get(Job, trial.final_job_id)
            assert final.status == "succeeded" and final.spec["trial"]["from_job"] == job.id
            assert "student" not in _stages_started(db, final.id)
            assert {"student.safetensors", "report.png", "tensorboard.zip"} <= _artifacts(db, final.id)
            assert final.results["validation"] == results["validation"]  # the same weights
            assert all(row["student"] is not None for row in final.results["tasks"].values())
            assert trial.test["mean_retention"] is not None
            stored = db.scalar(select(Artifact).where(Artifact.job_id == final.id,
                                                      Artifact.name == "student.safetensors"))
            assert get_store(settings).local_path(stored.path).stat().st_size > 0


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_controller_killed_mid_finalisation_finishes_with_nothing_run_twice(settings: Settings, monkeypatch) -> None:
    search_id = store_search(settings, tiny_goal(trials=3, parallel=1))
    real, dies = controller.insert_job, {"calls": 0}

    def dies_after_storing(**kwargs):
        job = real(**kwargs)
        if ":final:" in (kwargs["idempotency_key"] or "") and not dies["calls"]:
            dies["calls"] += 1  # the finalise job is stored and committed, the trial row never links it
            raise RuntimeError("killed after storing a finalise job")
        return job

    monkeypatch.setattr(controller, "insert_job", dies_after_storing)
    search = _drive(settings, search_id)
    assert search.status == "succeeded"
    with session_scope(settings.resolved_database_url) as db:
        trials = list(db.scalars(select(SearchTrial).where(SearchTrial.search_id == search_id)))
        finals = list(db.scalars(select(Job).where(Job.idempotency_key.like(f"{search_id}:final:%"))))
        front = db.get(Search, search_id).summary["pareto"]
        assert front and dies["calls"] == 1
        assert sorted(int(j.idempotency_key.rsplit(":", 1)[1]) for j in finals) == front  # one per front trial
        assert {t.final_job_id for t in trials if t.number in front} == {j.id for j in finals}
        for job in finals:
            assert job.status == "succeeded" and job.attempt == 1
            started = db.scalar(select(func.count()).select_from(JobEvent).where(
                JobEvent.job_id == job.id, JobEvent.kind == "started"))
            assert started == 1  # claimed and run once
        assert all(t.test is not None for t in trials if t.number in front)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_finalise_job_refuses_a_source_that_ran_another_spec(settings: Settings, tmp_path) -> None:
    from app.models import Tenant
    from app.services.jobs import insert_job

    with session_scope(settings.resolved_database_url) as db:
        tenant = Tenant(name="acme")
        db.add(tenant)
        db.commit()
        light, _ = insert_job(db=db, tenant=tenant, spec=JobSpec.model_validate(
            tiny_spec(baseline=False, trial={"mode": "light"})), idempotency_key=None)
    assert execute_job(light.id, settings=settings) == "succeeded"
    with session_scope(settings.resolved_database_url) as db:
        tenant = db.scalar(select(Tenant))
        other, _ = insert_job(db=db, tenant=tenant, spec=JobSpec.model_validate(tiny_spec(
            baseline=False, student={"type": "mlp", "trunk": [8], "head": []},
            trial={"mode": "finalise", "from_job": light.id})), idempotency_key=None)
    assert execute_job(other.id, settings=settings) == "failed"
    with session_scope(settings.resolved_database_url) as db:
        assert db.get(Job, other.id).error_code == "trial_state_mismatch"
    state = torch.load(get_store(settings).local_path(f"{light.id}/trial-state.pt"), weights_only=True)
    assert set(state["finished"]) == {"student"}  # the student only: teachers come from their cache


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_cancel_during_finalisation_cancels_the_finalise_jobs(settings: Settings) -> None:
    from app.services.searches import request_cancel

    search_id = store_search(settings, tiny_goal(trials=2, parallel=2))
    for _ in range(10):  # run the trials, not the finalise jobs
        assert advance_search(search_id, settings=settings)
        with session_scope(settings.resolved_database_url) as db:
            finals = list(db.scalars(select(SearchTrial.final_job_id).where(
                SearchTrial.search_id == search_id, SearchTrial.final_job_id.is_not(None))))
        if finals:
            break
        for job_id in queued_jobs(settings, search_id):
            execute_job(job_id, settings=settings)
    assert finals
    with session_scope(settings.resolved_database_url) as db:
        request_cancel(db=db, search=db.get(Search, search_id))
    search = _drive(settings, search_id)
    assert search.status == "cancelled"
    with session_scope(settings.resolved_database_url) as db:
        assert all(db.get(Job, job_id).status == "cancelled" for job_id in finals)  # queued: cancelled at once
        trials = list(db.scalars(select(SearchTrial).where(SearchTrial.search_id == search_id)))
        assert all(t.test is None for t in trials) and all(t.state == "complete" for t in trials)
