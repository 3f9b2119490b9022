"""Placement with real processes: a worker's pool processes on disjoint device slots, a GPU worker
that would share GPUs refusing to start, and the validate warning over real HTTP that follows the
workers that declared themselves (uvicorn + Celery workers)."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.auth import create_api_key
from app.config import Settings
from app.db import session_scope
from app.models import Artifact, Worker
from app.services.placement import read_pool
from tests.conftest import tiny_spec
from tests.procs import (
    api_argv,
    env_for,
    free_port,
    running,
    wait_http,
    wait_until,
    worker_argv,
)
from tests.worker.test_run_job import events, load, make_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
# The test host has no GPU: DISTILLERY_WORKER_ACCELERATOR=cuda declares GPU slots all the same
# (the slot is the process's CUDA_VISIBLE_DEVICES); torch sees no CUDA, so the jobs train on the CPU.
GPU_SLOTS = {"DISTILLERY_WORKER_ACCELERATOR": "cuda", "DISTILLERY_WORKER_DEVICES": "2"}


def pool_argv(name: str, processes: int | str) -> list[str]:
    argv = worker_argv(name)
    argv[argv.index("-c") + 1] = str(processes)
    return argv


def declared(settings: Settings) -> dict[str, Worker]:
    with session_scope(settings.resolved_database_url) as db:
        return {w.name.split("@")[0]: w for w in db.query(Worker)}


def placement_of(settings: Settings, job_id: str) -> dict:
    [started] = [e for e in events(settings, job_id) if e.kind == "started"]
    return started.data["placement"]


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_gpu_worker_with_more_processes_than_devices_refuses_to_start(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings, DISTILLERY_WORKER_ACCELERATOR="cuda", DISTILLERY_WORKER_DEVICES="1")
    distillery = Path(sys.executable).parent / "distillery"
    done = subprocess.run([str(distillery), "worker", "-c", "2"], env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode != 0
    assert "refuses to start" in done.stderr and "two processes would share a GPU" in done.stderr
    assert "-c 1" in done.stderr
    # Celery's "-c auto" sizes the pool on CPUs, not GPUs: a GPU worker refuses it too.
    done = subprocess.run(pool_argv("auto", "auto"), env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode != 0 and "give a GPU worker -c N" in done.stderr
    assert declared(settings) == {}  # neither took a job nor declared itself


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_two_jobs_at_once_on_a_two_gpu_worker_get_disjoint_slots(settings: Settings, tmp_path: Path) -> None:
    spec = tiny_spec(training={"epochs": 6, "batch_size": 64, "lr": 0.003, "seed": 0})
    with running(pool_argv("slots", 2), env=env_for(settings, **GPU_SLOTS), log=tmp_path / "w.log") as worker:
        wait_until(lambda: "slots" in declared(settings), timeout=180, what="the worker's declaration")
        row = declared(settings)["slots"]
        assert (row.accelerator, row.devices_per_process, row.processes) == ("cuda", 1, 2)
        jobs = [make_job(settings, spec, send=True) for _ in range(3)]
        wait_until(lambda: all(load(settings, j).status in ("succeeded", "failed") for j in jobs), timeout=600,
                   interval=1, what="three jobs")
        assert worker.popen.poll() is None, worker.output()[-3000:]
    finished = [load(settings, j) for j in jobs]
    assert [j.status for j in finished] == ["succeeded"] * 3, [j.error_message for j in finished]
    placements = {j.id: placement_of(settings, j.id) for j in finished}
    for job in finished:  # each slot is its own GPU: slot 0 -> "0", slot 1 -> "1" (replaced children too)
        placement = placements[job.id]
        assert placement["slot"] in (0, 1) and placement["devices"] == 1 and placement["accelerator"] == "cuda"
        assert placement["cuda_visible_devices"] == str(placement["slot"])
        assert job.results["placement"] == placement  # results.json says the same
        with session_scope(settings.resolved_database_url) as db:
            stored = db.query(Artifact).filter_by(job_id=job.id, name="results.json").one()
        assert json.loads((settings.resolved_artifact_dir / stored.path).read_text())["placement"] == placement
    overlapping = [(a, b) for i, a in enumerate(finished) for b in finished[i + 1:]
                   if a.started_at < b.finished_at and b.started_at < a.finished_at]
    assert overlapping, "no two jobs ran at the same time: nothing was tested"
    for a, b in overlapping:
        assert placements[a.id]["cuda_visible_devices"] != placements[b.id]["cuda_visible_devices"]


def _key(settings: Settings) -> dict[str, str]:
    with session_scope(settings.resolved_database_url) as db:
        return {"Authorization": f"Bearer {create_api_key(db=db, tenant_name='placer')[1]}"}


@pytest.mark.parametrize("settings", ["sqlite", "postgres"], indirect=True)
def test_validate_warns_from_the_live_workers_and_a_bigger_worker_runs_the_job(settings: Settings,
                                                                                tmp_path: Path) -> None:
    spec = tiny_spec(resources={"devices": 2}, training={"epochs": 2, "batch_size": 64, "lr": 0.003, "seed": 0})
    port = free_port()
    # The API is told 4 devices: once a worker has declared itself, its own setting no longer counts.
    api_env = env_for(settings, DISTILLERY_WORKER_DEVICES="4")
    with running(api_argv(port), env=api_env, log=tmp_path / "api.log"), \
            running(worker_argv("one"), env=env_for(settings, DISTILLERY_WORKER_DEVICES="1"),
                    log=tmp_path / "one.log"), \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=_key(settings), timeout=120) as api:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        wait_until(lambda: "one" in declared(settings), timeout=180, what="worker one's declaration")
        checked = api.post("/v1/jobs/validate", json=spec)
        assert checked.status_code == 200, checked.text
        [warning] = checked.json()["warnings"]
        assert warning.startswith("resources.devices:") and "at most 1 per pool process" in warning
        assert api.post("/v1/jobs/validate", json=tiny_spec()).json()["warnings"] == []
        created = api.post("/v1/jobs", json=spec)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]

        def waiting() -> list[dict]:
            got = api.get(f"/v1/jobs/{job_id}/events").json()["data"]
            return [e for e in got if e["kind"] == "waiting_for_devices"]

        [event] = wait_until(waiting, timeout=120, what="the waiting_for_devices event")
        assert event["data"]["devices"] == 2 and event["data"]["worker_devices"] == 1
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        with running(worker_argv("two"), env=env_for(settings, DISTILLERY_WORKER_DEVICES="2"),
                     log=tmp_path / "two.log"):
            wait_until(lambda: "two" in declared(settings), timeout=180, what="worker two's declaration")
            assert api.post("/v1/jobs/validate", json=spec).json()["warnings"] == []
            done = wait_until(lambda: (j := api.get(f"/v1/jobs/{job_id}").json())["status"] not in
                              ("queued", "running") and j, timeout=600, interval=1, what="the job to end")
        assert done["status"] == "succeeded", done.get("error")
        with session_scope(settings.resolved_database_url) as db:  # worker two stopped: not live at once
            assert "two" not in {w.name.split("@")[0] for w in read_pool(db=db).live}
            assert "one" in {w.name.split("@")[0] for w in read_pool(db=db).live}
        assert len(waiting()) == 1  # told once, however often worker one saw it
        results = api.get(f"/v1/jobs/{job_id}/results").json()
        assert results["world_size"] == 2
        assert results["placement"]["accelerator"] == "cpu" and results["placement"]["devices"] == 2
        [started] = [e for e in api.get(f"/v1/jobs/{job_id}/events").json()["data"] if e["kind"] == "started"]
        assert started["data"]["placement"] == results["placement"]
