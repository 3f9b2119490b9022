"""Start a throwaway Distillery stack (API + worker) for a benchmark: PostgreSQL + Redis or embedded."""

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.procs import free_port, redis_server

ROOT = Path(__file__).resolve().parent.parent
# Unset: each stack starts its own throwaway redis-server, so two benchmarks (or a benchmark and the
# tests) never consume each other's messages. Set it to measure against a given server; that
# server's database is used as it is (never flushed), so give each concurrent run its own.
REDIS = os.environ.get("BENCH_REDIS_URL")


@dataclass
class Stack:
    url: str
    key: str
    env: dict[str, str]
    data_dir: Path
    api_pid: int


def rss_mib(pid: int) -> float:
    """Return a process's resident memory in MiB (NaN when /proc does not say)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_pids(pid: int) -> list[int]:
    """Return the pids of a process's direct children."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


@contextmanager
def _database(backend: str, data_dir: Path) -> Iterator[str]:
    if backend == "embedded":
        yield f"sqlite:///{data_dir / 'bench.db'}"
        return
    from tests.conftest import _pg_database  # a throwaway database, dropped afterwards

    yield from _pg_database()


@contextmanager
def _redis(data_dir: Path) -> Iterator[str]:
    if REDIS:
        yield REDIS
        return
    port = free_port()
    proc = redis_server(port, data_dir / "redis.log")
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def stack(*, backend: str = "postgres", api_workers: int = 1, worker: bool = True,
          extra_env: dict[str, str] | None = None, api_log_level: str = "warning") -> Iterator[Stack]:
    """Run migrate, an API (uvicorn) and optionally one Celery worker; stop them afterwards."""
    with tempfile.TemporaryDirectory(prefix="distillery-bench-") as tmp, ExitStack() as services:
        data_dir = Path(tmp)
        db_url = services.enter_context(_database(backend, data_dir))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLERY_")}
        env.update({"DISTILLERY_DATA_DIR": str(data_dir), "DISTILLERY_DATABASE_URL": db_url,
                    "PYTHONUNBUFFERED": "1", **(extra_env or {})})
        if backend == "postgres":
            env["DISTILLERY_BROKER_URL"] = services.enter_context(_redis(data_dir))
        cli = [sys.executable, "-m", "app.cli"]
        subprocess.run([*cli, "migrate"], env=env, check=True, cwd=ROOT, capture_output=True)
        key = subprocess.run([*cli, "keys", "create", "bench"], env=env, check=True, cwd=ROOT,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        port = free_port()
        procs = [subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
                                   "--workers", str(api_workers), "--log-level", api_log_level],
                                  env=env, cwd=ROOT, start_new_session=True)]
        if worker:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "distillery",
                 "-c", "1", "--loglevel", os.environ.get("BENCH_WORKER_LOGLEVEL", "WARNING"), "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"],
                env=env, cwd=ROOT, start_new_session=True, stdout=open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "ab"), stderr=subprocess.STDOUT))
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            yield Stack(url=url, key=key, env=env, data_dir=data_dir, api_pid=procs[0].pid)
        finally:
            for proc in procs:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)
