"""MLflow export of a job: a callback that logs the spec as params, each epoch's scalars as
metrics (step = epoch), and at the end the test results and every artifact file (the student's
files, results.json, metrics.csv, the report, tensorboard.zip) to one run on a tracking server.

Optional: needs the `mlflow` extra (`pip install 'distillery[mlflow]'`), imported only when a job
logs to MLflow. Metric keys are `<run>/<tag>` with the TensorBoard run and tag names
(tracking.py), e.g. `student/validation/digit.accuracy`, `baseline/loss/total`; the test results
are `<teacher|student|baseline>/test/<task>.<metric>` at step 0.
"""

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from app.training.callbacks import CallbackChain, TrainCallbacks
from app.training.errors import TrainingCancelled, TrainingError
from app.training.evaluate import PRIMARY_METRICS
from app.training.spec import JobSpec, spec_sha256
from app.training.tracking import run_name, scalar_tags

log = logging.getLogger("distillery.tracking")

RUN_FILE = "mlflow-run.json"  # in the workdir: a resumed job logs on to the same run
PARAM_CHARS = 500  # the smallest value limit of the MLflow servers in use; spec.json has it all
BATCH = 100  # params per log_batch call (the server's limit)


def flat_params(value: Any, prefix: str = "") -> dict[str, str]:
    """Return the spec's leaves as MLflow params: `training.lr`, `tasks.0.name`, ..."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value:
        items = ((str(index), item) for index, item in enumerate(value))
    else:
        return {prefix: json.dumps(value) if not isinstance(value, str) else value}
    params: dict[str, str] = {}
    for key, item in items:
        params.update(flat_params(item, f"{prefix}.{key}" if prefix else str(key)))
    return {key: text[:PARAM_CHARS] for key, text in params.items()}


def result_metrics(results: dict[str, Any]) -> dict[str, float]:
    """Return results.json's test numbers as `<role>/test/<task>.<metric>`, plus the sizes."""
    values = {f"{role}/test/{task}.{row['metric']}": row[role]
              for task, row in results["tasks"].items()
              for role in ("teacher", "student", "baseline") if row.get(role) is not None}
    for role in ("teacher", "student"):
        if results["params"].get(role):
            values[f"{role}/params"] = results["params"][role]
    values["timing/total_seconds"] = results["timing"]["total_seconds"]
    return values


class MlflowTracker(TrainCallbacks):
    """Log one job to one MLflow run; use as a context manager around train().

    Entering creates the run (or reopens the one a previous attempt in this workdir created); a
    server that cannot be reached then is a TrainingError, before any training. Later failures
    to log only warn and stop the logging: hours of training are not lost to a tracker outage.
    Leaving with an error ends the run KILLED (cancelled) or FAILED.
    """

    def __init__(self, *, tracking_uri: str, experiment: str, spec: JobSpec, workdir: Path,
                 job_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.spec, self.workdir, self.job_id = spec, Path(workdir), job_id
        self.metric_names = {task.name: PRIMARY_METRICS[task.kind][0] for task in spec.tasks}
        self.run_id: str | None = None
        self.ended = False
        self._pending: list[Any] = []  # epoch batches in flight (MLflow's async logging)

    def __enter__(self) -> Self:
        try:
            self.run_id = self._open_run()
        except Exception as exc:  # the client's own errors and the transport's
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise TrainingError(code="tracking_unavailable", message=(
                f"tracking.mlflow: cannot log to the MLflow server at {self.tracking_uri}: {first}"
            )) from exc
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is not None and not self.ended:
            status = "KILLED" if isinstance(error, TrainingCancelled) else "FAILED"
            self._flush()
            self._safely(lambda run_id: self.client.set_terminated(run_id, status=status))

    def _open_run(self) -> str:
        saved, sha = self.workdir / RUN_FILE, spec_sha256(self.spec)
        earlier = json.loads(saved.read_text()) if saved.exists() else {}
        if earlier.get("spec_sha256") == sha:  # the same job resumed (another spec starts afresh)
            self.client.update_run(earlier["run_id"], status="RUNNING")
            return earlier["run_id"]
        experiment = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.experiment))
        wanted = self.spec.tracking.mlflow if self.spec.tracking else None
        tags = {"distillery.job_id": self.job_id or "", "distillery.spec_name": self.spec.name}
        run = self.client.create_run(experiment_id, tags=tags,
                                     run_name=(wanted.run_name if wanted and wanted.run_name
                                               else self.spec.name))
        run_id = run.info.run_id
        self.workdir.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"run_id": run_id, "spec_sha256": sha}))
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in
                  flat_params(self.spec.model_dump(mode="json", exclude={"tracking"})).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(run_id, params=params[start:start + BATCH])
        self.client.log_dict(run_id, self.spec.model_dump(mode="json"), "spec.json")
        return run_id

    def _safely(self, call: Any) -> None:
        """Run `call(run_id)`; on an error warn once and log nothing more."""
        if self.run_id is None:
            return
        try:
            call(self.run_id)
        except Exception:
            log.warning("MLflow logging to %s failed; the job goes on without it",
                        self.tracking_uri, exc_info=True)
            self.run_id = None

    def _log_metrics(self, values: dict[str, float], *, step: int, wait: bool) -> None:
        """Send one batch; `wait=False` queues it on MLflow's logging thread: a synchronous call
        took 0.2-0.4 s per epoch on loopback here (measured; docs/PERFORMANCE.md)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]

        def send(run_id: str) -> None:
            operation = self.client.log_batch(run_id, metrics=metrics, synchronous=wait)
            if operation is not None and not wait:
                self._pending.append(operation)

        self._safely(send)

    def _flush(self) -> None:
        """Wait for the queued epoch batches (their errors surface here)."""
        pending, self._pending = self._pending, []
        for operation in pending:
            self._safely(lambda run_id, operation=operation: operation.wait())

    def on_epoch_end(self, *, stage: str, epoch: int, epochs: int, progress: float,
                     metrics: dict[str, float], losses: dict[str, float], seconds: float) -> None:
        tags = scalar_tags(metrics=metrics, losses=losses, seconds=seconds,
                           metric_names=self.metric_names)
        self._log_metrics({f"{run_name(stage)}/{tag}": value for tag, value in tags.items()},
                          step=epoch, wait=False)

    def on_train_end(self, *, results: dict[str, Any], artifacts: list[Path]) -> None:
        self._flush()
        self._log_metrics(result_metrics(results), step=0, wait=True)
        for path in artifacts:
            self._safely(lambda run_id, path=path: self.client.log_artifact(run_id, str(path)))
        self._safely(lambda run_id: self.client.set_terminated(run_id, status="FINISHED"))
        self.ended = True


def mlflow_tracker(spec: JobSpec, *, tracking_uri: str | None, default_experiment: str,
                   workdir: Path, job_id: str | None) -> MlflowTracker | None:
    """Return the tracker a job logs to MLflow through, or None when it does not.

    A job logs when the worker (or the CLI) has a tracking URI: to the spec's
    `tracking.mlflow.experiment`, else to `default_experiment`. A spec that asks for MLflow where
    there is no tracking URI, or no mlflow package, fails with a TrainingError before training.
    """
    wanted = spec.tracking.mlflow if spec.tracking else None
    if not tracking_uri:
        if wanted is None:
            return None
        raise TrainingError(code="tracking_unavailable", message=(
            "tracking.mlflow: this worker has no MLflow tracking server; set "
            "DISTILLERY_MLFLOW_TRACKING_URI, or leave tracking.mlflow out"))
    try:
        import mlflow  # noqa: F401  (the optional extra)
    except ImportError as exc:
        raise TrainingError(code="tracking_unavailable", message=(
            "tracking.mlflow: the mlflow package is not installed on this worker "
            "(pip install 'distillery[mlflow]')")) from exc
    return MlflowTracker(tracking_uri=tracking_uri, spec=spec, workdir=workdir, job_id=job_id,
                         experiment=wanted.experiment if wanted else default_experiment)


@contextlib.contextmanager
def tracked(spec: JobSpec, callbacks: TrainCallbacks, *, tracking_uri: str | None,
            default_experiment: str, workdir: Path, job_id: str | None) -> Iterator[TrainCallbacks]:
    """Yield the callbacks to train with: `callbacks`, plus the MLflow tracker when the job logs
    to MLflow (see mlflow_tracker), whose run then ends with the block's outcome."""
    tracker = mlflow_tracker(spec, tracking_uri=tracking_uri, default_experiment=default_experiment,
                             workdir=workdir, job_id=job_id)
    if tracker is None:
        yield callbacks
        return
    with tracker:
        yield CallbackChain(callbacks, tracker)
