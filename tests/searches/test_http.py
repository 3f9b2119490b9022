"""Searches over real HTTP with real Celery workers, on SQLite + filesystem broker and on PostgreSQL + Redis:
a worker killed mid-search, cancel-all, 422s."""

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.config import Settings
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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # `settings`: both backends
TRIALS = 4  # enough for trials before and after the kill, few enough for two backends
# A killed worker may hold a trial's message it never claimed (the filesystem transport gives none
# back): the reaper resends a job queued this long, as the lost-message fault tests set it.
FAST_SEARCH = {"DISTILLERY_SEARCH_POLL_SECONDS": "0.5", "DISTILLERY_RESEND_QUEUED_AFTER_SECONDS": "15"}


def _key(settings: Settings) -> dict[str, str]:
    from app.auth import create_api_key
    from app.db import session_scope

    with session_scope(settings.resolved_database_url) as db:
        return {"Authorization": f"Bearer {create_api_key(db=db, tenant_name='searcher')[1]}"}


def _search(api: httpx.Client, search_id: str) -> dict:
    response = api.get(f"/v1/searches/{search_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_search_survives_a_killed_worker_and_reports_its_front(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings, **FAST_SEARCH)
    port = free_port()
    with running(api_argv(port), env=env, log=tmp_path / "api.log"), \
            running(worker_argv("a"), env=env, log=tmp_path / "a.log") as worker_a, \
            running(worker_argv("b"), env=env, log=tmp_path / "b.log"), \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=_key(settings), timeout=60) as api:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        bad = api.post("/v1/searches", json=tiny_goal(space={"dataset.builtin": {"choices": ["digits-mt"]}}))
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.space.dataset.builtin"
        # `distillery search submit goal.json --wait` follows the whole search with its live table.
        goal = tmp_path / "goal.json"
        goal.write_text(json.dumps(tiny_goal(trials=TRIALS)))
        cli_run: dict = {}
        waiting = threading.Thread(target=_cli_submit_wait, args=(f"http://127.0.0.1:{port}",
                                                                  api.headers["Authorization"].split()[1], goal, cli_run))
        waiting.start()
        search_id = wait_until(lambda: next(iter(s["id"] for s in api.get("/v1/searches").json()["data"]), None),
                               timeout=60, what="the CLI's search")
        # Kill one worker (its whole process group: the controller thread and the job) mid-search.
        wait_until(lambda: len(_search(api, search_id)["trials"]) >= 2, timeout=120, what="two trials")
        worker_a.signal_group(signal.SIGKILL)
        with running(worker_argv("c"), env=env, log=tmp_path / "c.log"):
            done = wait_until(lambda: (s := _search(api, search_id))["status"] in ("succeeded", "failed") and s,
                              timeout=800, interval=1, what="the search to end")
        assert done["status"] == "succeeded", done
        waiting.join(timeout=60)
        assert cli_run["exit_code"] == 0, cli_run["output"]
        assert f"search {search_id} succeeded: {TRIALS}/{TRIALS} trials ended" in cli_run["output"]
        trials = done["trials"]
        assert sorted(t["number"] for t in trials) == list(range(TRIALS))  # none lost
        assert len({t["job_id"] for t in trials}) == TRIALS  # none run twice: one job per trial
        assert all(t["state"] in ("complete", "infeasible") for t in trials)
        assert done["pareto"] and done["best"] in done["pareto"]
        assert [t["number"] for t in trials if t["test"] is not None] == done["pareto"]
        names = {a["name"] for a in api.get(f"/v1/searches/{search_id}/artifacts").json()}
        assert names == {"search.json", "pareto.csv", "pareto.png"}
        assert api.get(f"/v1/searches/{search_id}/artifacts/pareto.png").content[:8] == b"\x89PNG\r\n\x1a\n"
        csv_rows = api.get(f"/v1/searches/{search_id}/artifacts/pareto.csv").text.strip().splitlines()
        assert len(csv_rows) == 1 + len(done["pareto"])
        best_job = next(t["final_job_id"] for t in trials if t["number"] == done["best"])  # its finalise job
        assert api.get(f"/v1/jobs/{best_job}/artifacts/student.safetensors").status_code == 200
        events = api.get(f"/v1/searches/{search_id}/events", params={"limit": 1000}).json()["data"]
        assert [e["kind"] for e in events][-1] == "succeeded"
        assert sum(e["kind"] == "trial_started" for e in events) == TRIALS
        with api.stream("GET", f"/v1/searches/{search_id}/events/stream") as stream:
            body = "".join(stream.iter_text())
        assert body.count("event: trial_started") == TRIALS and "event: succeeded" in body
        _cli_status(f"http://127.0.0.1:{port}", api.headers["Authorization"].split()[1], search_id, done)


def _cli_submit_wait(url: str, key: str, goal: Path, into: dict) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    out = CliRunner().invoke(cli, ["search", "submit", str(goal), "--wait", "--url", url, "--api-key", key],
                             env={"COLUMNS": "250"})
    into.update(exit_code=out.exit_code, output=out.output)


def _cli_status(url: str, key: str, search_id: str, done: dict) -> None:
    """`distillery search status`: the trials' table with the front starred."""
    from typer.testing import CliRunner

    from app.cli import cli

    out = CliRunner().invoke(cli, ["search", "status", search_id, "--url", url, "--api-key", key],
                             env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert f"search {search_id} succeeded: {TRIALS}/{TRIALS} trials ended" in out.output
    for number in done["pareto"]:
        assert f"{number}*" in out.output


def test_cancel_cancels_the_running_children(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings, **FAST_SEARCH)
    port = free_port()
    slow = tiny_goal(trials=4)
    slow["base"]["training"]["epochs"] = 60
    with running(api_argv(port), env=env, log=tmp_path / "api.log"), \
            running(worker_argv("a"), env=env, log=tmp_path / "a.log"), \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=_key(settings), timeout=60) as api:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        search_id = api.post("/v1/searches", json=slow).json()["id"]

        def a_child_runs() -> bool:
            jobs = [t["job_id"] for t in _search(api, search_id)["trials"]]
            return any(api.get(f"/v1/jobs/{j}").json()["status"] == "running" for j in jobs)

        wait_until(a_child_runs, timeout=120, what="a running child")
        assert api.post(f"/v1/searches/{search_id}/cancel").status_code == 200
        started = time.monotonic()
        done = wait_until(lambda: (s := _search(api, search_id))["status"] == "cancelled" and s,
                          timeout=90, interval=0.5, what="the search to be cancelled")
        print(f"cancel-all took {time.monotonic() - started:.1f}s")
        statuses = {api.get(f"/v1/jobs/{t['job_id']}").json()["status"] for t in done["trials"]}
        assert statuses <= {"cancelled"}, statuses
        assert len(done["trials"]) == 2  # parallel 2; nothing started after the cancel
        assert api.post(f"/v1/searches/{search_id}/cancel").status_code == 409
