"""MLflow export against a real `mlflow server` on loopback (SQLite store, served artifacts),
read back through the MLflow client. Skipped only where the mlflow extra is not installed."""

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.auth import get_or_create_tenant
from app.config import Settings
from app.db import session_scope
from app.models import Artifact, Job, JobEvent
from app.services.jobs import insert_job
from app.training.callbacks import CallbackChain, TrainCallbacks
from app.training.loop import train
from app.training.mlflow_tracking import RUN_FILE, mlflow_tracker
from app.training.spec import JobSpec
from tests.conftest import tiny_spec
from tests.procs import free_port, running, wait_http
from worker.tasks import execute_job

pytest.importorskip("mlflow.server", reason="the mlflow extra (with its server) is not installed")
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracking server: its own process group, a SQLite store, artifacts served by it."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts")]
    with running(argv, env=dict(os.environ), log=root / "server.log") as server:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout=180)
        except TimeoutError:
            pytest.fail(f"mlflow server did not start:\n{server.output()[-3000:]}")
        yield f"http://127.0.0.1:{port}"


def test_a_worker_job_logs_params_epochs_results_and_student_files(
        settings: Settings, mlflow_uri: str, tmp_path: Path):
    settings = settings.model_copy(update={"mlflow_tracking_uri": mlflow_uri})
    experiment = f"e2e-{uuid.uuid4().hex[:8]}"
    spec = tiny_spec(tracking={"mlflow": {"experiment": experiment, "run_name": "tiny-run"}})
    with session_scope(settings.resolved_database_url) as db:
        tenant = get_or_create_tenant(db=db, name="acme")
        job_id = insert_job(db=db, tenant=tenant, spec=JobSpec.model_validate(spec),
                            idempotency_key=None)[0].id
    assert execute_job(job_id, settings=settings) == "succeeded"
    with session_scope(settings.resolved_database_url) as db:
        epochs = [e.data for e in db.scalars(select(JobEvent).where(
            JobEvent.job_id == job_id, JobEvent.kind == "epoch").order_by(JobEvent.seq))]
        stored = {a.name: a.sha256 for a in db.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        results = db.get(Job, job_id).results

    client = MlflowClient(tracking_uri=mlflow_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    [run] = client.search_runs([found.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-run"
    assert run.data.tags["distillery.job_id"] == job_id
    params = run.data.params
    assert params["name"] == "tiny-digits" and float(params["training.lr"]) == spec["training"]["lr"]
    assert params["tasks.0.name"] == "digit" and params["teachers.0.source.train.epochs"] == "2"
    # Per-epoch metrics: one point per epoch of each stage, equal to the job's epoch events.
    for stage, key in (("student", "student"), ("baseline", "baseline"), ("teacher:t", "teacher.t")):
        seen = {e["epoch"]: e for e in epochs if e["stage"] == stage}
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{key}/loss/total")}
        assert history == pytest.approx({epoch: e["losses"]["total"] for epoch, e in seen.items()})
        accuracy = client.get_metric_history(run.info.run_id, f"{key}/validation/digit.accuracy")
        assert {m.step: m.value for m in accuracy} == pytest.approx(
            {epoch: e["metrics"]["digit"] for epoch, e in seen.items()})
    # The test results, as in results.json.
    for task, row in results["tasks"].items():
        for role in ("teacher", "student", "baseline"):
            assert run.data.metrics[f"{role}/test/{task}.{row['metric']}"] == pytest.approx(row[role])
    # Every artifact of the job, byte for byte, plus the spec.
    listed = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert listed >= {*stored, "spec.json"} and "student.safetensors" in listed
    for name in ("student.safetensors", "tensorboard.zip"):
        local = client.download_artifacts(run.info.run_id, name, str(tmp_path))
        assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == stored[name]


def test_a_crashed_run_is_failed_and_the_resumed_job_finishes_the_same_run(
        mlflow_uri: str, tmp_path: Path):
    """The CLI's path (no server): train() inside the tracker, the setting's default experiment."""
    spec = JobSpec.model_validate(tiny_spec())
    experiment = f"default-{uuid.uuid4().hex[:8]}"

    class DieInStudent(TrainCallbacks):
        def on_epoch_end(self, *, stage: str, epoch: int, **_: object) -> None:
            if stage == "student" and epoch == 2:
                raise RuntimeError("worker died")

    tracker = mlflow_tracker(spec, tracking_uri=mlflow_uri, default_experiment=experiment,
                             workdir=tmp_path, job_id=None)
    assert tracker is not None
    with pytest.raises(RuntimeError, match="worker died"), tracker:
        train(spec, tmp_path, callbacks=CallbackChain(DieInStudent(), tracker))
    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = tracker.run_id
    assert client.get_run(run_id).info.status == "FAILED"
    assert (tmp_path / RUN_FILE).is_file()

    resumed = mlflow_tracker(spec, tracking_uri=mlflow_uri, default_experiment=experiment,
                             workdir=tmp_path, job_id=None)
    with resumed:
        train(spec, tmp_path, callbacks=resumed)
    assert resumed.run_id == run_id
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "baseline/loss/total")]
    assert sorted(steps) == list(range(1, spec.training.epochs + 1))


def test_distillery_train_logs_to_the_server_in_the_setting(mlflow_uri: str, tmp_path: Path):
    """`distillery train` (no server of ours) with DISTILLERY_MLFLOW_TRACKING_URI set."""
    experiment = f"cli-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update({"DISTILLERY_MLFLOW_TRACKING_URI": mlflow_uri, "DISTILLERY_MLFLOW_EXPERIMENT": experiment})
    done = subprocess.run([sys.executable, "-m", "app.cli", "train", str(spec), "--out", str(tmp_path / "out"),
                           "--threads", "1"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-digits"
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert run.data.metrics["student/test/digit.accuracy"] == pytest.approx(
        results["tasks"]["digit"]["student"])
    listed = {item.path for item in client.list_artifacts(run.info.run_id)}
    written = {p.name for p in (tmp_path / "out").iterdir() if p.is_file()}
    assert "tensorboard.zip" in written and written - listed == set(), written - listed
