"""`distillery up | api | worker | migrate`: run the service on this machine."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console, current_settings
from app.cli.keys import ensure_dev_key

ROOT = Path(__file__).resolve().parents[2]  # the checkout (or /app in the image): alembic.ini, migrations/


def run_migrations(database_url: str | None = None) -> None:
    """Upgrade the database to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if database_url:
        cfg.attributes["url"] = database_url
    command.upgrade(cfg, "head")


def migrate() -> None:
    """Upgrade the database schema to the newest revision."""
    settings = current_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run_migrations(settings.resolved_database_url)
    console.print("database is at the newest revision")


def redacted(url: str) -> str:
    """A database or broker URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def worker_argv(concurrency: int = 1, loglevel: str = "INFO") -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "distillery",
            "-c", str(concurrency), "--loglevel", loglevel, "-n", f"distillery-{os.getpid()}@%h"]


def webhook_worker_argv(loglevel: str = "INFO") -> list[str]:
    # Deliveries wait on the network, not the CPU: threads, on their own queue (app.queue).
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "distillery.webhooks",
            "-P", "threads", "-c", "8", "--loglevel", loglevel, "-n", f"distillery-webhooks-{os.getpid()}@%h"]


def api(host: Annotated[str | None, typer.Option()] = None, port: Annotated[int | None, typer.Option()] = None) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    settings = current_settings()
    uvicorn.run("app.main:app", host=host or settings.host, port=port or settings.port, proxy_headers=True)


def worker(concurrency: Annotated[int, typer.Option("-c", help="pool processes (jobs at once); on a GPU worker each gets WORKER_DEVICES // c GPUs of its own")] = 1,
           loglevel: Annotated[str, typer.Option()] = "INFO",
           webhooks: Annotated[bool, typer.Option("--webhooks", help="deliver webhooks, not jobs")] = False) -> None:
    """Run a Celery worker that trains queued jobs (SIGTERM hands its running job back to the queue)."""
    argv = webhook_worker_argv(loglevel) if webhooks else worker_argv(concurrency, loglevel)
    proc = subprocess.Popen(argv, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        # The whole group hears it: the pool process releases its job at the next step and
        # requeues it, the main process stops taking messages; `docker stop` signals us alone.
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    raise typer.Exit(proc.wait())


def up(host: Annotated[str | None, typer.Option()] = None, port: Annotated[int | None, typer.Option()] = None) -> None:
    """Start everything on this machine: migrate, a dev API key, a job worker, a webhook worker, the API."""
    import uvicorn

    settings = current_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run_migrations(settings.resolved_database_url)
    key, created = ensure_dev_key()
    host, port = host or settings.host, port or settings.port
    workers = [subprocess.Popen(argv, start_new_session=True) for argv in (worker_argv(), webhook_worker_argv())]
    console.print(f"[bold]Distillery[/bold] on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    console.print(f"database: {redacted(settings.resolved_database_url)}\n"
                  f"broker:   {redacted(settings.resolved_broker_url)}", highlight=False)
    if created:  # shown once; later starts only say where it is kept
        console.print(f"new dev API key (kept in {settings.data_dir / 'dev-api-key'}):", highlight=False)
        print(key, flush=True)
    else:
        console.print(f"dev API key: in {settings.data_dir / 'dev-api-key'}", highlight=False)

    def exit_on_term(signum: int, _frame: object) -> None:
        # uvicorn re-raises the signal it caught once it has shut down; turning it into SystemExit
        # lets the worker below be stopped instead of orphaned.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_term)
    try:
        uvicorn.run("app.main:app", host=host, port=port)
    finally:
        for worker_proc in workers:
            os.killpg(worker_proc.pid, signal.SIGTERM)
        for worker_proc in workers:
            try:
                worker_proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker_proc.pid, signal.SIGKILL)
