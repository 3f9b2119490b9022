"""The worker's pool process handling: forks never overlap a reaper sweep; children are replaced at once."""

import os
import threading
import time
from pathlib import Path

from app.config import Settings
from tests.conftest import tiny_spec
from tests.procs import env_for, running, wait_until, worker_argv
from tests.worker.test_run_job import load, make_job
from worker import reaper
from worker.pool import MAINTAIN_INTERVAL_SECONDS, RecyclingAsynPool


def test_a_fork_waits_for_a_running_reaper_sweep() -> None:
    """A child forked mid-sweep would inherit the sweep's locks (an import lock hung one for good)."""
    sweeping, release = threading.Event(), threading.Event()

    def sweep() -> None:
        with reaper._SWEEPING:
            sweeping.set()
            release.wait(5)

    thread = threading.Thread(target=sweep)
    thread.start()
    sweeping.wait(5)
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: the guard must be free here, or the next sweep-guarded code would hang
        os._exit(0 if reaper._SWEEPING.acquire(timeout=1) else 1)
    waited = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    thread.join()
    assert waited >= 0.25, f"fork went ahead {waited:.3f}s into a running sweep"
    assert os.waitstatus_to_exitcode(status) == 0, "the child inherited a held sweep guard"
    assert reaper._SWEEPING.acquire(timeout=1)  # and the parent's guard was released after the fork
    reaper._SWEEPING.release()


def test_pool_checks_for_exited_children_often() -> None:
    assert MAINTAIN_INTERVAL_SECONDS <= 0.25
    assert list(RecyclingAsynPool.timers.fget(_FakePool()).values()) == [MAINTAIN_INTERVAL_SECONDS]


class _FakePool:
    maintain_pool = object()


def test_queued_jobs_follow_each_other_without_the_pool_timer_stall(settings: Settings, tmp_path: Path) -> None:
    """With one task per child, Celery used to replace the finished child on a 5 s timer (celery#9588)."""
    spec = tiny_spec(training={"epochs": 1, "batch_size": 256, "lr": 0.003, "seed": 0}, baseline=False)
    ids = [make_job(settings, spec, send=True) for _ in range(6)]
    with running(worker_argv("gaps"), env=env_for(settings), log=tmp_path / "worker.log"):
        wait_until(lambda: all(load(settings, i).status == "succeeded" for i in ids), timeout=120,
                   what="six jobs succeeded")
    jobs = sorted((load(settings, i) for i in ids), key=lambda j: j.started_at)
    gaps = [(cur.started_at - prev.finished_at).total_seconds() for prev, cur in zip(jobs, jobs[1:])]
    # Measured 0.45-0.7 s per gap on a 2-core machine; with the stall most gaps were 3.4-4.7 s, so
    # five gaps all under 2.5 s without the fix are unlikely (the check failed when tried so).
    assert max(gaps) < 2.5, gaps
