"""The worker's process pool: Celery's prefork pool, checked for exited children more often.

Every job runs in a fresh child (``worker_max_tasks_per_child = 1``). When the next message
reaches the pool before the finished child has exited, Celery misses that child's exit and only
replaces it on its periodic pool check, every 5 s (celery/celery#9588). On a queue of short jobs
that left the worker idle 4–5 s between most jobs (measured with bench/queue_throughput.py). The
check is a non-blocking ``waitpid`` per child, so running it every 0.1 s costs nothing measurable.
"""

from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool

MAINTAIN_INTERVAL_SECONDS = 0.1


class RecyclingAsynPool(AsynPool):
    @property
    def timers(self) -> dict:
        return {self.maintain_pool: MAINTAIN_INTERVAL_SECONDS}


class RecyclingTaskPool(TaskPool):
    Pool = RecyclingAsynPool
