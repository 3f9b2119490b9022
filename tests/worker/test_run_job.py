"""run_job against real databases: in-process for the logic, a real Celery worker for delivery and faults."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select, update

from app.auth import get_or_create_tenant
from app.config import Settings
from app.db import session_scope
from app.models import Artifact, Job, JobEvent
from app.queue import enqueue
from app.services.jobs import insert_job, request_cancel
from app.storage import sha256_file
from app.training.spec import JobSpec
from tests.conftest import tiny_spec
from tests.procs import env_for, running, wait_until, worker_argv
from worker.tasks import execute_job


def make_job(settings: Settings, spec: dict[str, Any], *, send: bool = False) -> str:
    with session_scope(settings.resolved_database_url) as db:
        tenant = get_or_create_tenant(db=db, name="acme")
        job, _ = insert_job(db=db, tenant=tenant, spec=JobSpec.model_validate(spec), idempotency_key=None)
    if send:
        enqueue(job.id, settings=settings)
    return job.id


def load(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.resolved_database_url) as db:
        return db.get(Job, job_id)


def events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_scope(settings.resolved_database_url) as db:
        return list(db.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_job_runs_to_success_with_artifacts_and_events(settings: Settings) -> None:
    job_id = make_job(settings, tiny_spec())
    assert execute_job(job_id, settings=settings) == "succeeded"
    job = load(settings, job_id)
    assert job.status == "succeeded" and job.progress == 1.0 and job.attempt == 1 and job.lease_owner is None
    assert set(job.results["tasks"]) == {"digit", "parity", "large"}
    for row in job.results["tasks"].values():
        assert {"teacher", "student", "baseline"} <= set(row)
    with session_scope(settings.resolved_database_url) as db:
        arts = {a.name: a for a in db.scalars(select(Artifact).where(Artifact.job_id == job_id))}
    assert {"results.json", "student.safetensors", "student.json", "metrics.csv"} <= set(arts)
    for art in arts.values():
        path = settings.resolved_artifact_dir / art.path
        assert sha256_file(path) == art.sha256 and path.stat().st_size == art.size
    assert json.loads((settings.resolved_artifact_dir / arts["results.json"].path).read_text()) == job.results
    kinds = [e.kind for e in events(settings, job_id)]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "succeeded"
    assert kinds.count("epoch") == 6  # teacher 2 + student 2 + baseline 2
    seqs = [e.seq for e in events(settings, job_id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert not (settings.work_dir / job_id).exists()  # checkpoint removed after success


def test_second_delivery_does_not_run_the_job_again(settings: Settings) -> None:
    job_id = make_job(settings, tiny_spec())
    assert execute_job(job_id, settings=settings) == "succeeded"
    assert execute_job(job_id, settings=settings) == "skipped"
    assert load(settings, job_id).attempt == 1


def test_cancel_while_running_ends_cancelled(settings: Settings) -> None:
    spec = tiny_spec(training={"epochs": 200, "batch_size": 32, "lr": 0.003, "seed": 0})
    job_id = make_job(settings, spec)
    outcome: list[str] = []
    runner = threading.Thread(target=lambda: outcome.append(execute_job(job_id, settings=settings)))
    runner.start()
    wait_until(lambda: load(settings, job_id).stage == "student", timeout=60, what="student stage")
    asked = time.monotonic()
    with session_scope(settings.resolved_database_url) as db:
        request_cancel(db=db, job=db.get(Job, job_id))
    runner.join(timeout=20)
    assert outcome == ["cancelled"]
    assert time.monotonic() - asked < 5  # the worker notices within a heartbeat or two
    job = load(settings, job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    kinds = [e.kind for e in events(settings, job_id)]
    assert "cancel_requested" in kinds and kinds[-1] == "cancelled"


def test_training_error_is_recorded_with_code(settings: Settings) -> None:
    job_id = make_job(settings, tiny_spec(training={"epochs": 3, "batch_size": 64, "lr": 1e30, "seed": 0}))
    assert execute_job(job_id, settings=settings) == "failed"
    job = load(settings, job_id)
    assert job.status == "failed" and job.error_code == "diverged"
    assert "Traceback" not in (job.error_message or "")
    assert events(settings, job_id)[-1].data["code"] == "diverged"


def in_student_stage(settings: Settings, job_id: str, *, epoch: int) -> bool:
    """True once the job has finished `epoch` epochs of its student stage."""
    metrics = load(settings, job_id).metrics or {}
    return metrics.get("stage") == "student" and metrics.get("epoch", 0) >= epoch


def long_spec(epochs: int = 30) -> dict[str, Any]:
    return tiny_spec(training={"epochs": epochs, "batch_size": 128, "lr": 0.003, "seed": 0})


@pytest.mark.slow
def test_worker_process_runs_job_and_duplicate_message_is_ignored(settings: Settings, tmp_path: Path) -> None:
    job_id = make_job(settings, tiny_spec(), send=True)
    enqueue(job_id, settings=settings)  # a duplicate delivery of the same job
    with running(worker_argv("dup"), env=env_for(settings), log=tmp_path / "worker.log") as worker:
        wait_until(lambda: load(settings, job_id).status == "succeeded", timeout=90, what="job success")
        wait_until(lambda: "not claimable" in worker.output(), timeout=30, what="second message skipped")
    assert load(settings, job_id).attempt == 1


@pytest.mark.slow
def test_sigterm_requeues_promptly_and_the_job_resumes(settings: Settings, tmp_path: Path, record_property) -> None:  # noqa: ANN001
    job_id = make_job(settings, long_spec(), send=True)
    env = env_for(settings)
    with running(worker_argv("term1"), env=env, log=tmp_path / "w1.log") as worker:
        wait_until(lambda: in_student_stage(settings, job_id, epoch=3), timeout=120, what="student epoch 3")
        worker.signal_group(signal.SIGTERM)
        signalled = time.monotonic()
        wait_until(lambda: load(settings, job_id).status == "queued", timeout=10, interval=0.05,
                   what="job back in the queue")
        record_property("sigterm_to_queued_s", round(time.monotonic() - signalled, 2))
        worker.popen.wait(timeout=30)
    requeued_at = [e for e in events(settings, job_id) if e.kind == "requeued"]
    assert requeued_at and requeued_at[0].data["reason"] == "worker_shutdown"
    with running(worker_argv("term2"), env=env, log=tmp_path / "w2.log"):
        wait_until(lambda: load(settings, job_id).status == "succeeded", timeout=180, what="resumed job success")
    job = load(settings, job_id)
    assert job.attempt == 2
    student_epochs = [e.data["epoch"] for e in events(settings, job_id) if e.kind == "epoch" and e.data["stage"] == "student"]
    # resumed from the checkpoint: at most the interrupted epoch is repeated, nothing restarts at 1
    assert student_epochs.count(1) == 1 and sorted(set(student_epochs)) == list(range(1, 31))
    assert len(student_epochs) - 30 <= 1


@pytest.mark.slow
def test_killed_worker_is_reaped_and_job_resumes(settings: Settings, tmp_path: Path, record_property) -> None:  # noqa: ANN001
    job_id = make_job(settings, long_spec(), send=True)
    # Every epoch checkpointed, so the resume point is exact. With the default interval a kill
    # also repeats the epochs of the last 2 s (tests/training/test_loop.py covers the interval).
    env = env_for(settings, DISTILLERY_CHECKPOINT_INTERVAL_SECONDS="0")
    with running(worker_argv("kill1"), env=env, log=tmp_path / "k1.log") as worker:
        wait_until(lambda: in_student_stage(settings, job_id, epoch=3), timeout=120, what="student epoch 3")
        worker.signal_group(signal.SIGKILL)
        worker.popen.wait(timeout=10)
    assert load(settings, job_id).status == "running"  # nobody knows yet
    restarted = time.monotonic()
    with running(worker_argv("kill2"), env=env, log=tmp_path / "k2.log"):
        wait_until(lambda: load(settings, job_id).status == "running" and load(settings, job_id).attempt == 2,
                   timeout=60, interval=0.1, what="job resumed")
        record_property("kill_to_resumed_s", round(time.monotonic() - restarted, 2))
        wait_until(lambda: load(settings, job_id).status == "succeeded", timeout=180, what="reaped job success")
    job = load(settings, job_id)
    assert job.attempt == 2
    kinds = [e.kind for e in events(settings, job_id)]
    assert "requeued" in kinds and kinds[-1] == "succeeded"
    student_epochs = [e.data["epoch"] for e in events(settings, job_id) if e.kind == "epoch" and e.data["stage"] == "student"]
    assert len(student_epochs) - 30 <= 1  # at most the epoch in flight is done again
    record_property("epochs_repeated", len(student_epochs) - 30)
    # the resumed student is the one an uninterrupted run with the same seed gives
    reference = make_job(settings, long_spec())
    assert execute_job(reference, settings=settings) == "succeeded"
    assert job.results["tasks"] == load(settings, reference).results["tasks"]


@pytest.mark.slow
@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_redelivery_after_visibility_timeout_runs_the_job_once(settings: Settings, tmp_path: Path) -> None:
    """Redis hands the unacked message to the second worker mid-job; the claim keeps it to one run."""
    env = env_for(settings, DISTILLERY_VISIBILITY_TIMEOUT_SECONDS="2")
    # The job must outlast the second worker's start (~5 s with its preload): ~15 s here. At 30
    # epochs it ran in 2 s once children stopped re-importing torch._dynamo and sklearn per job.
    job_id = make_job(settings, long_spec(epochs=300), send=True)
    with running(worker_argv("vis1"), env=env, log=tmp_path / "v1.log") as first:
        wait_until(lambda: load(settings, job_id).status == "running", timeout=60, what="job running")
        with running(worker_argv("vis2"), env=env, log=tmp_path / "v2.log") as second:
            wait_until(lambda: load(settings, job_id).status == "succeeded", timeout=180, what="job success")
            skipped = lambda: "not claimable" in first.output() + second.output()  # noqa: E731
            wait_until(skipped, timeout=30, what="the redelivered copy to be skipped")
    job = load(settings, job_id)
    assert job.attempt == 1
    assert [e.kind for e in events(settings, job_id)].count("started") == 1


def test_reaper_fails_job_after_max_attempts(settings: Settings) -> None:
    from datetime import timedelta

    from app.db import utcnow
    from worker.reaper import reap_once

    job_id = make_job(settings, tiny_spec())
    with session_scope(settings.resolved_database_url) as db:
        db.execute(update(Job).where(Job.id == job_id).values(
            status="running", attempt=settings.max_attempts, lease_owner="gone:1:x",
            heartbeat_at=utcnow() - timedelta(seconds=settings.stale_after_seconds + 5)))
        db.commit()
    assert reap_once(settings) == []
    job = load(settings, job_id)
    assert job.status == "failed" and job.error_code == "worker_lost"


def test_out_of_memory_is_reported_as_such(settings: Settings, tmp_path: Path) -> None:
    """A worker under a 4 GiB address-space cap (as in a container) gets a teacher of ~8 GiB."""
    spec = tiny_spec()
    spec["teachers"][0]["source"]["train"]["arch"]["hidden"] = [16384] * 8
    job_id = make_job(settings, spec)
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from app.config import get_settings\n"
        "from worker.tasks import execute_job\n"
        f"print(execute_job({job_id!r}, settings=get_settings()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env_for(settings), capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip().splitlines()[-1] == "failed", done.stderr[-2000:]
    job = load(settings, job_id)
    assert job.error_code == "out_of_memory" and "batch_size" in job.error_message
    assert "Traceback" not in job.error_message


def test_queued_job_whose_message_was_lost_is_sent_again(settings: Settings) -> None:
    from datetime import timedelta

    from app.db import utcnow
    from worker.reaper import reap_once

    job_id = make_job(settings, tiny_spec())  # stored, never sent: as if the broker lost it
    assert reap_once(settings) == []  # not waiting long enough yet
    with session_scope(settings.resolved_database_url) as db:
        db.execute(update(Job).where(Job.id == job_id).values(
            enqueued_at=utcnow() - timedelta(seconds=settings.resend_queued_after_seconds + 1)))
        db.commit()
    assert reap_once(settings) == [job_id]
    assert reap_once(settings) == []  # restamped: one resend per interval
    assert events(settings, job_id)[-1].kind == "resent"


def test_a_broken_user_teacher_fails_the_job_with_an_actionable_message(settings: Settings, tmp_path: Path) -> None:
    """The teacher was uploaded fine (valid ONNX) but gives 7 logits for a 10-class task."""
    from app.db import session_scope as scope
    from app.models import File

    class Wrong(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            flat = x.flatten(1)
            return flat[:, :7], flat[:, :2], flat[:, :1]

    onnx_path = tmp_path / "wrong.onnx"
    torch.onnx.export(Wrong(), (torch.zeros(1, 64),), str(onnx_path), input_names=["x"],
                      output_names=["digit", "parity", "large"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    with scope(settings.resolved_database_url) as db:
        tenant = get_or_create_tenant(db=db, name="acme")
        row = File(tenant_id=tenant.id, purpose="teacher_onnx", filename="wrong.onnx", size=0, sha256="0" * 64, meta={})
        db.add(row)
        db.commit()
        (settings.files_dir / tenant.id).mkdir(parents=True)
        (settings.files_dir / tenant.id / row.id).write_bytes(onnx_path.read_bytes())
    spec = tiny_spec()
    spec["teachers"][0]["source"] = {"onnx": {"file": row.id}}
    job_id = make_job(settings, spec)
    assert execute_job(job_id, settings=settings) == "failed"
    job = load(settings, job_id)
    assert job.error_code == "teacher_mismatch" and "digit" in job.error_message
    assert "Traceback" not in job.error_message
