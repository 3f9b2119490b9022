"""A worker's side of data-parallel jobs: its device count, and jobs that need more devices.

The ranks themselves are started by the engine (app.training.launch.train_job) inside the job
process, on the GPUs of its pool slot (worker/slots.py); app/services/placement.py says how the
API warns about a job no live worker can take.
"""

import logging
import os
import socket
import time
from typing import Any

from sqlalchemy import select

from app.config import Settings
from app.db import session_scope
from app.job_status import JobStatus
from app.models import Job, JobEvent
from app.queue import enqueue
from app.services.events import add_event
from worker.slots import current_slot, detected_cuda_devices, unpooled_slot

log = logging.getLogger("distillery.worker")
RETRY_SECONDS = 5.0  # a job too big for this worker goes back to the queue after this pause


def worker_device_count(settings: Settings) -> int:
    """Return the devices a job can use in this process: its pool slot's (worker/slots.py), else
    the setting, else the CUDA devices, else 1 (a CPU host)."""
    slot = current_slot()
    if slot is not None:
        return slot.devices
    return settings.worker_devices or detected_cuda_devices() or 1


def job_placement(settings: Settings) -> dict[str, Any]:
    """Return where a job claimed by this process trains (its `started` event, results.json):
    its slot, with the CUDA_VISIBLE_DEVICES this process (and so its ranks) really has."""
    record = (current_slot() or unpooled_slot(worker_device_count(settings))).record()
    return {**record, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def defer_if_too_big(job_id: str, *, settings: Settings) -> bool:
    """Leave a queued job that needs more devices than this worker has to a bigger worker.

    Returns True when deferred: the job stays `queued`, gains one `waiting_for_devices` event
    (the first time), and its message goes back to the queue after RETRY_SECONDS."""
    with session_scope(settings.resolved_database_url) as db:
        job = db.get(Job, job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return False  # claim_job decides (and logs) what happens to it
        needed = int((job.spec.get("resources") or {}).get("devices", 1))
        available = worker_device_count(settings)
        if needed <= available:
            return False
        told = db.scalar(select(JobEvent.id).where(JobEvent.job_id == job_id,
                                                   JobEvent.kind == "waiting_for_devices").limit(1))
        if told is None:
            add_event(db=db, job_id=job_id, kind="waiting_for_devices",
                      data={"devices": needed, "worker_devices": available,
                            "worker": socket.gethostname(),
                            "message": f"the job needs {needed} devices; a pool process of this "
                                       f"worker has {available}; it stays queued for a worker "
                                       "with enough"})
            db.commit()
    log.info("job %s needs %d devices, this worker has %d: back to the queue", job_id, needed, available)
    time.sleep(RETRY_SECONDS)
    enqueue(job_id, settings=settings)
    return True
