"""Job counts by status, for the metrics scrape."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.job_status import JobStatus
from app.models import Job


def count_jobs_by_status(*, db: Session) -> dict[str, int]:
    """Return every status with its number of jobs (0 where none), across all tenants."""
    counts = dict.fromkeys(JobStatus, 0)
    for status, count in db.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[status] = count
    return counts
