"""A real job on a real Celery worker announces itself: job.started, job.task_milestone, job.succeeded."""

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import Settings
from app.db import session_scope
from app.models import Job, JobEvent
from app.queue import enqueue
from tests.procs import Proc, env_for, free_port, running, wait_until, worker_argv
from tests.webhooks.conftest import api_key, insert_job

TARGET = 0.75


def _expected_milestones(events: list[JobEvent]) -> dict[str, int]:
    """Task -> the first student epoch whose metric reached TARGET of the teacher's last epoch (higher is better)."""
    teacher = {}
    for event in events:
        if event.kind == "epoch" and event.data["stage"].startswith("teacher:") and event.data["metrics"]:
            teacher.update(event.data["metrics"])
    first: dict[str, int] = {}
    for event in events:
        if event.kind == "epoch" and event.data["stage"] == "student":
            for task, value in event.data["metrics"].items():
                if task not in first and value / teacher[task] >= TARGET:
                    first[task] = event.data["epoch"]
    return first


def test_a_real_job_sends_started_milestones_and_succeeded(
        api: TestClient, hook_settings: Settings, webhook_worker: Proc, receiver: Callable, tmp_path: Path) -> None:
    headers, tenant_id = api_key(hook_settings, "acme")
    port = free_port()
    hook = api.post("/v1/webhooks", headers=headers, json={
        "url": f"http://127.0.0.1:{port}/hooks",
        "event_types": ["job.started", "job.succeeded", "job.task_milestone"]}).json()
    job_id = insert_job(hook_settings, tenant_id, notify={"retention": TARGET},
                        training={"epochs": 3, "batch_size": 128, "lr": 0.003, "seed": 0})
    with receiver(port, hook["secret"]) as rx, \
            running(worker_argv("jobs"), env=env_for(hook_settings), log=tmp_path / "worker.log"):
        enqueue(job_id, settings=hook_settings)  # what POST /v1/jobs does after its dry run
        wait_until(lambda: any(r["body"]["type"] == "job.succeeded" for r in rx.records()), timeout=240,
                   what="job.succeeded at the receiver")
        with session_scope(hook_settings.resolved_database_url) as db:
            job = db.get(Job, job_id)
            assert job is not None and job.status == "succeeded"
            events = list(db.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
        expected = _expected_milestones(events)
        assert expected, "the job reached no milestone: the test would check nothing"
        wait_until(lambda: len(rx.records()) >= 2 + len(expected), timeout=30, what="every event")
        records = rx.records()

    assert all(r["signature_ok"] for r in records)
    types = [r["body"]["type"] for r in records]
    assert types.count("job.started") == 1 and types.count("job.succeeded") == 1
    milestones = {r["body"]["data"]["task"]: r["body"]["data"] for r in records
                  if r["body"]["type"] == "job.task_milestone"}
    assert len(milestones) == types.count("job.task_milestone")  # once per task
    assert {task: m["epoch"] for task, m in milestones.items()} == expected
    for m in milestones.values():
        assert m["job_id"] == job_id and m["target"] == TARGET and m["higher_is_better"] is True
        assert abs(m["retention"] - m["student"] / m["teacher"]) < 1e-6 and m["retention"] >= TARGET
    # The job's own event log has the milestones too, each after the student epoch that reached it.
    logged = [e for e in events if e.kind == "task_milestone"]
    assert sorted(e.data["task"] for e in logged) == sorted(expected)
    started = next(r for r in records if r["body"]["type"] == "job.started")
    succeeded = next(r for r in records if r["body"]["type"] == "job.succeeded")
    assert started["body"]["data"] == {"job_id": job_id, "name": "tiny-digits", "status": "running", "attempt": 1}
    assert started["received_at"] < succeeded["received_at"]
