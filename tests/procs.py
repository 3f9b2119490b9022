"""Real processes for tests: a Celery worker, uvicorn, `distillery up`; started in their own session."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.config import Settings

FAST_LEASES = {
    "DISTILLERY_HEARTBEAT_SECONDS": "0.5",
    "DISTILLERY_STALE_AFTER_SECONDS": "4",
    "DISTILLERY_REAP_INTERVAL_SECONDS": "1",
    "DISTILLERY_TORCH_THREADS": "1",  # the suite runs several processes on few cores
}


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a child process needs to see the same database, broker and data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
    env.update({"DISTILLERY_ENV": "test", "DISTILLERY_DATA_DIR": str(settings.data_dir),
                "DISTILLERY_DATABASE_URL": settings.resolved_database_url, "PYTHONUNBUFFERED": "1"})
    if settings.broker_url:
        env["DISTILLERY_BROKER_URL"] = settings.broker_url
    env.update(FAST_LEASES)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server(port: int, log: Path) -> subprocess.Popen:
    """Start a private, non-persistent redis-server on `port` (its own session, so it can be killed)."""
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--logfile", str(log)], start_new_session=True)


class Proc:
    def __init__(self, popen: subprocess.Popen, log: Path):
        self.popen, self.log = popen, log

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)  # children left behind by the group, if any
        self.popen.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def running(argv: list[str], *, env: dict[str, str], log: Path) -> Iterator[Proc]:
    """Run a process group for the block; stop it (TERM, then KILL) afterwards."""
    fh = log.open("ab")
    proc = Proc(subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True), log)
    try:
        yield proc
    finally:
        proc.stop()
        fh.close()


def worker_argv(name: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "distillery", "-c", "1",
            "--loglevel", "INFO", "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]


def api_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]


@contextmanager
def api_server(settings: Settings, log: Path, **env: str) -> Iterator[str]:
    """Run the API (uvicorn, `settings` plus `env`) on a free port for the block and yield its URL;
    the block fails if the API logged a traceback."""
    port = free_port()
    with running(api_argv(port), env=env_for(settings, **env), log=log) as api:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", timeout=60)
        yield url
        assert "Traceback" not in api.output(), api.output()[-3000:]


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.2, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def wait_http(url: str, *, timeout: float = 30) -> None:
    def up() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=timeout, what=url)


def spawned_ranks(marker: str) -> list[int]:
    """Return the pids of live multiprocessing-spawn children (data-parallel ranks) whose
    environment holds `marker`; a test sets the marker so that it finds its own ranks, orphans
    included (a resource tracker is not a rank; zombies are not live)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ, command = (entry / "environ").read_bytes(), (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and b"spawn_main" in command and state != "Z":
            pids.append(int(entry.name))
    return pids
