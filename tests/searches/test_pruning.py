"""ASHA over real workers: the children's epoch events feed the pruner; a pruned trial's job is cancelled."""

from pathlib import Path

import httpx
import optuna
import pytest

from app.config import Settings
from app.services.searches_study import storage_for
from tests.procs import (
    api_argv,
    env_for,
    free_port,
    running,
    wait_http,
    wait_until,
    worker_argv,
)
from tests.searches.conftest import tiny_goal
from tests.searches.test_http import FAST_SEARCH, _key, _search

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200), pytest.mark.parametrize("settings", ["sqlite"], indirect=True)]


def test_a_trial_behind_at_its_rung_is_pruned_and_its_job_cancelled(settings: Settings, tmp_path: Path) -> None:
    goal = tiny_goal(trials=4, parallel=1, pruning="asha", sampler="random", seed=3,
                     goal={"objectives": [{"metric": "mean_retention", "direction": "maximize"}]},
                     space={"training.lr": {"low": 1e-5, "high": 0.05, "log": True}})
    goal["base"]["training"]["epochs"] = 40  # long enough for the controller to see the first rungs
    env = env_for(settings, **FAST_SEARCH)
    port = free_port()
    with running(api_argv(port), env=env, log=tmp_path / "api.log"), \
            running(worker_argv("a"), env=env, log=tmp_path / "a.log"), \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=_key(settings), timeout=60) as api:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        search_id = api.post("/v1/searches", json=goal).json()["id"]
        done = wait_until(lambda: (s := _search(api, search_id))["status"] in ("succeeded", "failed") and s,
                          timeout=600, interval=1, what="the search to end")
        pruned = [t for t in done["trials"] if t["state"] == "pruned"]
        assert pruned, [(t["number"], t["state"], t["params"]) for t in done["trials"]]
        for trial in pruned:
            job = api.get(f"/v1/jobs/{trial['job_id']}").json()
            assert job["status"] == "cancelled"
            assert job["metrics"]["epoch"] < 40  # stopped early
        study = optuna.load_study(study_name=search_id, storage=storage_for(settings.resolved_database_url))
        states = {t.number: t.state for t in study.trials}
        for trial in pruned:
            assert states[trial["number"]] == optuna.trial.TrialState.PRUNED
            assert study.trials[trial["number"]].intermediate_values  # the epochs it was judged on
        events = [e["kind"] for e in api.get(f"/v1/searches/{search_id}/events", params={"limit": 1000}).json()["data"]]
        assert events.count("trial_pruning") == len(pruned) == events.count("trial_pruned")
