"""Settings read from the environment (prefix ``DISTILLERY_``) through ``get_settings()``."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the API, the worker and the CLI; defaults suit the embedded single-machine mode."""

    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".distillery")
    database_url: str | None = None  # default: SQLite under data_dir
    broker_url: str | None = None  # default: Celery filesystem transport under data_dir
    artifact_dir: Path | None = None  # default: data_dir / "artifacts"
    # Artifact store: "local" (a directory; API and workers share it) or "s3" (any S3-compatible
    # server, for workers on several hosts). Credentials come from the usual AWS_* variables.
    storage_backend: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None  # e.g. http://minio:9000; unset for AWS itself
    s3_region: str = "us-east-1"
    s3_prefix: str = "artifacts/"
    s3_files_prefix: str = "files/"  # uploads (datasets, teachers), when storage_backend is s3
    # torch intra-op threads per worker process; unset = torch's default (all cores). On a machine
    # shared with other processes 1 can be far faster (oversubscribed cores thrash).
    torch_threads: int | None = Field(default=None, ge=1)
    # Devices this worker trains data-parallel jobs on (resources.devices); unset: its CUDA device
    # count, or 1 on a CPU host. A GPU worker gives each of its -c pool processes D // c of them
    # (worker/slots.py). Workers declare theirs in the database; the API reads this one only
    # until a worker has (app/services/placement.py).
    worker_devices: int | None = Field(default=None, ge=1)
    # On a worker: "cuda" (GPU slots per pool process), "cpu", or "auto" = CUDA devices detected.
    # The live workers' values decide the API's fp16 refusal; the API's own ("auto": its host's
    # CUDA, as in the embedded deployment) only until a worker has declared itself.
    worker_accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_attempts: int = Field(default=3, ge=1)
    heartbeat_seconds: float = Field(default=2.0, gt=0)  # also how often cancel is checked
    stale_after_seconds: float = Field(default=60.0, gt=0)  # heartbeat older than this -> reaped
    reap_interval_seconds: float = Field(default=15.0, gt=0)
    # How often each job worker's search controller steps the active searches (pruning reports,
    # new trials after a lost step); a trial's end steps its search at once anyway.
    search_poll_seconds: float = Field(default=2.0, gt=0)
    # Epoch ends closer together than this share one checkpoint (the stage's last epoch and a
    # stop always write one): serialising the full state cost ~10% of a job whose epochs last
    # ~25 ms. A killed worker repeats at most this much training plus the epoch in flight. 0:
    # every epoch.
    checkpoint_interval_seconds: float = Field(default=2.0, ge=0)
    # Redis redelivers an unacked message after this; it must outlast the longest job.
    visibility_timeout_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    max_jobs_listed: int = Field(default=100, ge=1)
    dev_api_key: str | None = None  # `distillery up` writes one to data_dir/dev-api-key when unset
    # A queued job whose message may have been lost (broker restarted without persistence) is
    # sent again after this long; a duplicate is harmless since a job must be claimed to run.
    resend_queued_after_seconds: float = Field(default=600.0, gt=0)
    max_active_jobs_per_tenant: int = Field(default=20, ge=1)  # queued + running
    max_storage_bytes_per_tenant: int = Field(default=10 * 1024**3, ge=0)  # artifacts + uploads kept
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1)  # one uploaded file
    # Any other request body (a job spec is a few KiB); larger ones get 413 before they are read.
    max_json_bytes: int = Field(default=1024**2, ge=1024)
    # Open SSE streams (job and search events/stream, counted together) per tenant in one API process; 429 beyond.
    max_streams_per_tenant: int = Field(default=100, ge=1)
    rate_limit: str = "600/minute"  # per API key, `limits` notation; "" turns it off
    rate_limit_storage_url: str = "memory://"  # e.g. redis://host:6379/1 to share across API processes
    cors_origins: list[str] = []  # CORS stays off unless origins are listed
    # Specs are dry-run (one batch through every model) in this many spawned validator processes
    # before a job is accepted, so torch never loads into the API process; a dry run longer than the
    # timeout is refused with 503 and its process killed.
    validator_processes: int = Field(default=1, ge=1)
    # TorchScript teachers (file purpose teacher_torchscript, source "torchscript"): loading one runs
    # the code inside it in the worker and the validator, so they are refused unless this is on.
    allow_torchscript: bool = False
    validator_timeout_seconds: float = Field(default=60.0, gt=0)
    # Observability. GET /metrics needs no key (Prometheus convention) unless this token is set;
    # then it needs `Authorization: Bearer <token>`.
    metrics_token: str | None = None
    # Each Celery worker serves its own /metrics on this port (0: off); its pool processes write
    # to a prometheus-client multiprocess folder that the worker's main process reads.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"  # 0.0.0.0 where Prometheus scrapes from another host
    # "json": one JSON object per log line with request_id (API) or job_id (worker); "text" is the
    # development default.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Webhooks (app/webhooks): a failed delivery is retried after base * 2^(n-1) seconds (capped at
    # max, times a random factor in [0.5, 1.5)) until the horizon since the event (or a redeliver)
    # has passed; each attempt may take timeout seconds. Private, loopback and link-local targets
    # are refused unless allow_private (tests use a receiver on 127.0.0.1).
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_retry_horizon_seconds: float = Field(default=3 * 24 * 3600.0, gt=0)
    # How often a webhook worker re-sends due deliveries whose message was lost (broker restart).
    webhook_sweep_interval_seconds: float = Field(default=30.0, gt=0)
    # MLflow (the `mlflow` extra): with a tracking URI every job also logs to that server, in its
    # spec's tracking.mlflow.experiment or else in this one. Unset: a job whose spec asks for
    # MLflow fails (code tracking_unavailable) before it trains.
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = Field(default="distillery", min_length=1)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> "Settings":
        if self.env != "production":
            return self
        problems = []
        if self.resolved_database_url.startswith("sqlite"):
            problems.append("DISTILLERY_DATABASE_URL must name a server database (not SQLite)")
        if self.resolved_broker_url.startswith("filesystem"):
            problems.append("DISTILLERY_BROKER_URL must name a real broker (not the filesystem transport)")
        if self.dev_api_key:
            problems.append("DISTILLERY_DEV_API_KEY must not be set in production")
        if "*" in self.cors_origins:
            problems.append("DISTILLERY_CORS_ORIGINS must list origins, not '*'")
        if problems:
            raise ValueError("unsafe settings for production: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> "Settings":
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("DISTILLERY_STORAGE_BACKEND=s3 needs DISTILLERY_S3_BUCKET")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'distillery.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @property
    def files_dir(self) -> Path:
        return (self.data_dir / "files").resolve()

    @property
    def work_dir(self) -> Path:
        return (self.data_dir / "work").resolve()


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings (tests call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
