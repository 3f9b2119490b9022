"""A search's trials under the tenant's quotas: the controller waits (one recorded reason), then goes on."""

from sqlalchemy import select

from app.config import Settings
from app.db import session_scope
from app.models import Search, SearchEvent, SearchTrial, Tenant
from tests.searches.conftest import queued_jobs, store_search, tiny_goal
from worker.search import advance_search
from worker.tasks import execute_job


def _set_quota(settings: Settings, search_id: str, **quota: int | None) -> None:
    with session_scope(settings.resolved_database_url) as db:
        tenant = db.get(Tenant, db.get(Search, search_id).tenant_id)
        for name, value in quota.items():
            setattr(tenant, name, value)
        db.commit()


def _state(settings: Settings, search_id: str) -> tuple[str, list[str], list[tuple[str, dict]]]:
    """(search status, its trials' states, its events as (kind, data))."""
    with session_scope(settings.resolved_database_url) as db:
        status = db.get(Search, search_id).status
        trials = [t.state for t in db.scalars(select(SearchTrial).where(SearchTrial.search_id == search_id)
                                              .order_by(SearchTrial.number))]
        events = [(e.kind, e.data) for e in db.scalars(select(SearchEvent).where(SearchEvent.search_id == search_id)
                                                        .order_by(SearchEvent.seq))]
        return status, trials, events


def _waits(events: list[tuple[str, dict]]) -> list[str]:
    return [data["code"] for kind, data in events if kind == "waiting_for_quota"]


def test_trials_wait_for_the_active_job_cap_and_the_storage_quota(settings: Settings) -> None:
    search_id = store_search(settings, tiny_goal(trials=2, parallel=2))
    _set_quota(settings, search_id, max_active_jobs=1)
    for _ in range(3):  # steps while the cap holds: one trial runs, the second waits, one event says why
        assert advance_search(search_id, settings=settings)
    status, trials, events = _state(settings, search_id)
    assert status == "running" and trials == ["running"]
    assert _waits(events) == ["too_many_active_jobs"]
    assert "cap for this tenant is 1" in next(d["message"] for k, d in events if k == "waiting_for_quota")

    [first] = queued_jobs(settings, search_id)
    assert execute_job(first, settings=settings) == "succeeded"  # its artifacts now count against storage
    _set_quota(settings, search_id, max_storage_bytes=1)
    for _ in range(2):
        assert advance_search(search_id, settings=settings)
    status, trials, events = _state(settings, search_id)
    assert status == "running" and trials[0] in ("complete", "infeasible") and len(trials) == 1
    assert _waits(events) == ["too_many_active_jobs", "storage_quota_exceeded"]
    assert "DELETE /v1/jobs" in [d for k, d in events if k == "waiting_for_quota"][-1]["message"]

    _set_quota(settings, search_id, max_storage_bytes=None)  # room again: the next step starts trial 1
    assert advance_search(search_id, settings=settings)
    assert len(queued_jobs(settings, search_id)) == 1
    for _ in range(10):  # trial 1, then the front's finalise jobs (one at a time under the cap of 1)
        for job_id in queued_jobs(settings, search_id):
            assert execute_job(job_id, settings=settings) == "succeeded"
        assert advance_search(search_id, settings=settings)
        status, trials, events = _state(settings, search_id)
        if status != "running":
            break
    assert status == "succeeded" and len(trials) == 2
    assert set(_waits(events)) == {"too_many_active_jobs", "storage_quota_exceeded"}
    assert len(_waits(events)) <= 2 + len(trials)  # one event per wait, never one per step
