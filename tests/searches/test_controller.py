"""The search controller's step, driven in-process over a real database with the worker's job code."""


import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import session_scope
from app.models import Job, JobEvent, Search, SearchTrial
from app.services import searches_controller as controller
from tests.searches.conftest import queued_jobs, store_search, tiny_goal
from worker.search import advance_search
from worker.tasks import execute_job

pytestmark = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)


def _drive(settings: Settings, search_id: str, *, max_rounds: int = 40) -> Search:
    """Step the search and run each queued child job with the worker's code until the search ends."""
    for _ in range(max_rounds):
        assert advance_search(search_id, settings=settings)
        with session_scope(settings.resolved_database_url) as db:
            search = db.get(Search, search_id)
            if search.status in ("succeeded", "failed", "cancelled"):
                return search
        for job_id in queued_jobs(settings, search_id):
            execute_job(job_id, settings=settings)
    raise AssertionError("the search did not end")


def test_six_trials_train_and_run_the_teacher_once(settings: Settings) -> None:
    search_id = store_search(settings, tiny_goal())
    search = _drive(settings, search_id)
    assert search.status == "succeeded", (search.error_code, search.error_message)
    with session_scope(settings.resolved_database_url) as db:
        trials = list(db.scalars(select(SearchTrial).where(SearchTrial.search_id == search_id)))
        jobs = [db.get(Job, t.job_id) for t in trials]
        teacher_stages = db.scalars(select(JobEvent).where(
            JobEvent.job_id.in_([j.id for j in jobs]), JobEvent.kind == "stage_started")).all()
        trainings = [e for e in teacher_stages if e.data["stage"].startswith("teacher:")]
        summary = db.get(Search, search_id).summary
    assert sorted(t.number for t in trials) == list(range(6))
    assert len({j.id for j in jobs}) == 6 and all(j.status == "succeeded" for j in jobs)
    assert len(trainings) == 1  # one teacher stage trained in the whole search
    forwards = [j.results["teacher_cache"]["t"] for j in jobs]
    assert forwards.count("miss") == 1 and forwards.count("hit") == 5  # one teacher forward
    assert all(j.spec["baseline"] is False for j in jobs)
    assert summary["pareto"] and summary["best"] in summary["pareto"]
    for trial in trials:
        assert trial.state in ("complete", "infeasible")
        assert (trial.test is not None) == (trial.number in summary["pareto"])  # test: the front only
        assert trial.measures["feasible"] == (trial.measures["params"] <= 3000)


def test_a_step_that_died_after_asking_optuna_adopts_that_trial(settings: Settings, monkeypatch) -> None:
    search_id = store_search(settings, tiny_goal(trials=3, parallel=1))
    calls = {"n": 0}
    real = controller.insert_job

    def dies_once(**kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("killed between Optuna's ask and the trial row")
        return real(**kwargs)

    monkeypatch.setattr(controller, "insert_job", dies_once)
    assert advance_search(search_id, settings=settings)  # the step fails after ask(); logged
    import optuna

    from app.services.searches_study import storage_for
    study = optuna.load_study(study_name=search_id, storage=storage_for(settings.resolved_database_url))
    assert [t.number for t in study.trials] == [0]
    asked = study.trials[0].params
    search = _drive(settings, search_id)
    assert search.status == "succeeded"
    study = optuna.load_study(study_name=search_id, storage=storage_for(settings.resolved_database_url))
    assert [t.number for t in study.trials] == [0, 1, 2]  # nothing asked twice, nothing lost
    with session_scope(settings.resolved_database_url) as db:
        trials = {t.number: t for t in db.scalars(select(SearchTrial).where(SearchTrial.search_id == search_id))}
        assert sorted(trials) == [0, 1, 2] and len({t.job_id for t in trials.values()}) == 3
    assert {k: v for k, v in trials[0].params.items() if k != "student.trunk"} == \
        {k: v for k, v in asked.items() if k != "student.trunk"}
