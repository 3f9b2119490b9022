"""Where a job can run: what the job workers declare, the validate warning, fp16 on a CPU pool.

Each job worker upserts its row in `workers` when it starts and at every reaper sweep
(worker/slots.py): the devices one of its pool processes can give a job (a GPU worker's D // c,
a CPU worker's D), its accelerator, and how often it declares itself. A worker is live while its
row is younger than LIVE_PERIODS of its own period. The API's dry run reads those rows:
- `resources.devices`: a warning when no live worker has that many devices per pool process (the
  job would stay `queued`, with one `waiting_for_devices` event, until one starts: worker/ddp.py);
- `training.precision: "fp16"`: refused when no live worker has CUDA.
Until a worker has ever declared itself (an empty table) the API falls back to its own settings:
DISTILLERY_WORKER_DEVICES, else its /dev/nvidiaN count, else 1 (the API has no torch); and
DISTILLERY_WORKER_ACCELERATOR ("auto": this host's CUDA, as in the embedded deployment).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from glob import glob
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope, utcnow
from app.errors import InvalidRequest
from app.models import Worker

LIVE_PERIODS = 3  # a worker missing this many of its declarations in a row is no longer live
FORGET_AFTER = timedelta(days=1)  # rows of workers gone this long are deleted


def declare_worker(*, db: Session, host: str, name: str, accelerator: str, devices_per_process: int,
                   processes: int, period_seconds: float) -> None:
    """Insert or refresh a job worker's row (one statement: a restart under the same name updates it)."""
    now = utcnow()
    values = {"host": host, "name": name, "accelerator": accelerator,
              "devices_per_process": devices_per_process, "processes": processes,
              "period_seconds": period_seconds, "started_at": now, "seen_at": now}
    insert = (postgresql if db.get_bind().dialect.name == "postgresql" else sqlite).insert(Worker)
    refreshed = {key: value for key, value in values.items() if key not in ("host", "name", "started_at")}
    db.execute(insert.values(**values).on_conflict_do_update(index_elements=["host", "name"], set_=refreshed))
    db.execute(delete(Worker).where(Worker.seen_at < now - FORGET_AFTER))
    db.commit()


def retire_worker(*, db: Session, host: str, name: str) -> None:
    """A worker shutting down is no longer live at once (not ~LIVE_PERIODS sweeps later); its row
    stays, as the last seen, for the fallbacks that read declared workers."""
    row = db.scalar(select(Worker).where(Worker.host == host, Worker.name == name))
    if row is not None:
        row.seen_at = utcnow() - timedelta(seconds=LIVE_PERIODS * row.period_seconds + 1)
        db.commit()


@dataclass(frozen=True)
class WorkerPool:
    """The job workers as they declared themselves, and the live ones among them."""

    declared: list[Worker]
    live: list[Worker]

    @property
    def known(self) -> bool:
        return bool(self.declared)


def read_pool(*, db: Session, now: datetime | None = None) -> WorkerPool:
    """Return the declared workers and which of them are live."""
    now = now or utcnow()
    rows = list(db.scalars(select(Worker)))
    live = [w for w in rows if now - w.seen_at <= timedelta(seconds=LIVE_PERIODS * w.period_seconds)]
    return WorkerPool(declared=rows, live=live)


def _pool(settings: Settings, db: Session | None) -> WorkerPool:
    if db is not None:
        return read_pool(db=db)
    with session_scope(settings.resolved_database_url) as own:
        return read_pool(db=own)


def api_device_count(settings: Settings) -> int:
    """Return the device count the API assumes for the largest worker before any declared itself."""
    return settings.worker_devices or len(glob("/dev/nvidia[0-9]*")) or 1


def placement_warnings(spec: Any, settings: Settings, *, db: Session | None = None) -> list[str]:
    """Return warnings about where `spec` (a JobSpec) can run; empty when a live worker fits it."""
    needed = spec.resources.devices
    pool = _pool(settings, db)
    if not pool.known:
        available = api_device_count(settings)
        if needed <= available:
            return []
        return [(f"resources.devices: the job needs {needed} devices and the workers have "
                 f"{available} (DISTILLERY_WORKER_DEVICES on the API: no worker has declared its "
                 "devices yet); it would stay queued until a worker with enough devices starts")]
    if not pool.live:
        return [(f"resources.devices: no job worker is live (none declared itself in the last "
                 f"{LIVE_PERIODS} sweeps); the job stays queued until a worker with {needed} "
                 "devices per pool process starts")]
    best = max(w.devices_per_process for w in pool.live)
    if needed <= best:
        return []
    return [(f"resources.devices: the job needs {needed} devices and the live workers have at most "
             f"{best} per pool process ({_describe(pool.live)}); it would stay queued until a "
             "worker with enough devices starts")]


def dry_run_accelerator(spec_json: dict[str, Any], *, settings: Settings) -> str:
    """Return what the dry run checks `training.precision` against: "cuda" where a live worker
    has CUDA, "cpu" where the live ones have none (fp16 is refused here, naming them), else the
    API's DISTILLERY_WORKER_ACCELERATOR; the last declared workers stand in while none is live."""
    pool = _pool(settings, None)
    if not pool.known:
        return settings.worker_accelerator
    workers = pool.live or pool.declared
    if any(w.accelerator == "cuda" for w in workers):
        return "cuda"
    training = spec_json.get("training") or {}
    if training.get("precision") == "fp16":
        message = ("training.precision 'fp16' needs a CUDA device (half-precision kernels and a gradient "
                   f"scaler); the {'live' if pool.live else 'last seen'} job workers have none "
                   f"({_describe(workers)}): use 'bf16' (also on the CPU) or 'fp32'")
        raise InvalidRequest(message, errors=[{"field": "body.training.precision", "message": message,
                                               "type": "precision_unsupported"}])
    return "cpu"


def _describe(workers: list[Worker]) -> str:
    return ", ".join(f"{w.name}: {w.accelerator} x{w.devices_per_process}" for w in workers[:5]) + \
        (f" and {len(workers) - 5} more" if len(workers) > 5 else "")
