"""A job's status: the one list of values stored in ``jobs.status`` and sent as ``"status"`` in JSON."""

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is: queued, then running, then succeeded, failed or cancelled (a queued job may be cancelled)."""

    # A StrEnum member is its value (JobStatus.QUEUED == "queued"): the database and the JSON keep the strings.
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)  # a tuple: SQL IN lists keep one order
TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
