"""Data-parallel jobs through the worker's job code (real gloo ranks, real database): placement,
cancel, SIGTERM and a killed rank, with the process list checked after each fault."""

import os
import signal
import threading
import time
import uuid

import pytest

from app.config import Settings
from app.db import session_scope
from app.models import Job
from app.services.jobs import request_cancel
from app.services.placement import placement_warnings
from app.training.spec import JobSpec
from tests.conftest import tiny_spec
from tests.procs import spawned_ranks, wait_until
from tests.worker.test_run_job import events, in_student_stage, load, make_job
from worker import ddp
from worker.tasks import execute_job

# The ranks' processes are found by an environment marker they inherit from this test process.
pytestmark = [pytest.mark.parametrize("settings", ["sqlite"], indirect=True), pytest.mark.slow]


def two_devices(settings: Settings, epochs: int = 3) -> tuple[Settings, dict]:
    spec = tiny_spec(resources={"devices": 2}, training={"epochs": epochs, "batch_size": 64, "lr": 0.003,
                                                         "seed": 0})
    return settings.model_copy(update={"worker_devices": 2, "torch_threads": 1}), spec


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch) -> str:
    value = uuid.uuid4().hex
    monkeypatch.setenv("DDP_WORKER_TEST_MARKER", value)
    return value


def test_two_device_job_trains_with_two_ranks(settings: Settings, marker: str) -> None:
    settings, spec = two_devices(settings)
    job_id = make_job(settings, spec)
    assert execute_job(job_id, settings=settings) == "succeeded"
    job = load(settings, job_id)
    assert job.results["world_size"] == 2 and len(job.results["ranks"]) == 2
    assert len({rank["params_sha256"] for rank in job.results["ranks"]}) == 1
    kinds = [e.kind for e in events(settings, job_id)]
    # each epoch once: rank 0 alone writes events
    assert kinds.count("epoch") == sum(stage["epochs"] for stage in job.results["stages"])
    assert spawned_ranks(marker) == []


def test_a_job_needing_more_devices_stays_queued_with_one_event(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ddp, "RETRY_SECONDS", 0.0)
    settings, spec = two_devices(settings)
    small = settings.model_copy(update={"worker_devices": 1})
    job_id = make_job(small, spec)
    assert execute_job(job_id, settings=small) == "deferred"
    assert execute_job(job_id, settings=small) == "deferred"
    job = load(small, job_id)
    assert job.status == "queued" and job.attempt == 0
    waiting = [e for e in events(small, job_id) if e.kind == "waiting_for_devices"]
    assert len(waiting) == 1 and waiting[0].data["devices"] == 2 and waiting[0].data["worker_devices"] == 1
    assert placement_warnings(JobSpec.model_validate(spec), small)[0].startswith("resources.devices:")
    assert placement_warnings(JobSpec.model_validate(spec), settings) == []


def test_cancel_stops_every_rank_within_seconds(settings: Settings, marker: str) -> None:
    settings, spec = two_devices(settings, epochs=300)
    job_id = make_job(settings, spec)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(execute_job(job_id, settings=settings)))
    runner.start()
    wait_until(lambda: in_student_stage(settings, job_id, epoch=1), timeout=120, what="student epoch 1")
    asked = time.monotonic()
    with session_scope(settings.resolved_database_url) as db:
        request_cancel(db=db, job=db.get(Job, job_id))
    runner.join(timeout=30)
    assert outcome == ["cancelled"]
    assert time.monotonic() - asked < 10  # a heartbeat, then the step all ranks agree on
    assert spawned_ranks(marker) == []


def test_sigterm_hands_the_job_back_and_it_resumes(settings: Settings, marker: str) -> None:
    settings, spec = two_devices(settings, epochs=8)
    job_id = make_job(settings, spec)

    def terminate() -> None:
        wait_until(lambda: in_student_stage(settings, job_id, epoch=2), timeout=120, what="student epoch 2")
        os.kill(os.getpid(), signal.SIGTERM)  # the job process (rank 0); ranks > 0 ignore it

    threading.Thread(target=terminate, daemon=True).start()
    assert execute_job(job_id, settings=settings) == "requeued"  # on the main thread: its handler
    assert load(settings, job_id).status == "queued"
    assert spawned_ranks(marker) == []
    assert execute_job(job_id, settings=settings) == "succeeded"
    student = [e.data["epoch"] for e in events(settings, job_id) if e.kind == "epoch" and e.data["stage"] == "student"]
    assert student.count(1) == 1 and sorted(set(student)) == list(range(1, 9))


def test_a_killed_rank_requeues_the_job_which_resumes_to_the_uninterrupted_results(
        settings: Settings, marker: str) -> None:
    settings, spec = two_devices(settings, epochs=6)
    whole = make_job(settings, spec)
    assert execute_job(whole, settings=settings) == "succeeded"
    job_id = make_job(settings, {**spec, "name": "killed"})

    def kill_rank() -> None:
        wait_until(lambda: in_student_stage(settings, job_id, epoch=2), timeout=120, what="student epoch 2")
        for pid in spawned_ranks(marker):
            os.kill(pid, signal.SIGKILL)

    threading.Thread(target=kill_rank, daemon=True).start()
    assert execute_job(job_id, settings=settings) == "requeued"
    assert spawned_ranks(marker) == []
    requeued = [e for e in events(settings, job_id) if e.kind == "requeued"]
    assert requeued and requeued[-1].data["reason"] == "rank_lost"
    assert execute_job(job_id, settings=settings) == "succeeded"
    assert load(settings, job_id).attempt == 2
    assert load(settings, job_id).results["tasks"] == load(settings, whole).results["tasks"]
    assert spawned_ranks(marker) == []
