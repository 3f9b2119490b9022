"""The worker's process pool: Celery's prefork pool, checked for exited children more often, and
handing a dead child's job back at once.

Every job runs in a fresh child (``worker_max_tasks_per_child = 1``). When the next message
reaches the pool before the finished child has exited, Celery misses that child's exit and only
replaces it on its periodic pool check, every 5 s (celery/celery#9588). On a queue of short jobs
that left the worker idle 4–5 s between most jobs (measured with bench/queue_throughput.py). The
check is a non-blocking ``waitpid`` per child, so running it every 0.1 s costs nothing measurable.

The same check finds a child killed mid-job: its job is handed back there (worker/recovery.py),
then Celery's WorkerLostError rejects the message back to the queue (``task_reject_on_worker_lost``),
so the redelivered message finds the job queued and the next child resumes it. Which pool runs
depends on the broker: Redis gets the event-loop pool (``AsynPool``); the filesystem transport of
the embedded deployment has no event loop and gets billiard's threaded pool, whose supervisor
thread checks children every 0.1 s and by default waited 10 s more before declaring a job lost.
"""

from typing import Any

from billiard.pool import Pool as BlockingPool
from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool

from worker.recovery import hand_back_job_of_dead_child

MAINTAIN_INTERVAL_SECONDS = 0.1


class RecyclingAsynPool(AsynPool):
    @property
    def timers(self) -> dict:
        return {self.maintain_pool: MAINTAIN_INTERVAL_SECONDS}

    def on_job_process_lost(self, job: Any, pid: int, exitcode: int | None) -> None:
        # First the job, then the WorkerLostError that rejects its message back to the queue.
        hand_back_job_of_dead_child(task_id=job.correlation_id, pid=pid, exitcode=exitcode)
        super().on_job_process_lost(job, pid, exitcode)


class RecyclingBlockingPool(BlockingPool):
    def on_job_process_lost(self, job: Any, pid: int, exitcode: int | None) -> None:
        # billiard waits `worker_lost_wait` (10 s) for a result the dead child may have written
        # before it marks the job lost; the event-loop pool marks it at once, and so does this one.
        # A result read after this is dropped, and the job's own state is in the database: a job
        # that had finished holds no lease, so the hand-back leaves it alone.
        hand_back_job_of_dead_child(task_id=job.correlation_id, pid=pid, exitcode=exitcode)
        self.mark_as_worker_lost(job, exitcode)


class RecyclingTaskPool(TaskPool):
    Pool = RecyclingAsynPool
    BlockingPool = RecyclingBlockingPool
