"""The ``distillery`` command: run the service, manage keys, train locally, talk to a server."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from app.job_status import JobStatus

if TYPE_CHECKING:  # the CLI imports the client lazily: `distillery worker` should not pay for it
    from app.schemas import JobOut

cli = typer.Typer(help="Distillery: multi-task knowledge distillation as a service.", no_args_is_help=True)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
console = Console()
ROOT = Path(__file__).resolve().parent.parent

UrlOpt = Annotated[str, typer.Option("--url", envvar="DISTILLERY_URL", help="server URL")]
KeyOpt = Annotated[str, typer.Option("--api-key", envvar="DISTILLERY_API_KEY", help="API key")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _settings():  # imported lazily so `distillery submit` stays light
    from app.config import get_settings

    return get_settings()


def run_migrations(database_url: str | None = None) -> None:
    """Upgrade the database to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if database_url:
        cfg.attributes["url"] = database_url
    command.upgrade(cfg, "head")


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision."""
    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run_migrations(settings.resolved_database_url)
    console.print("database is at the newest revision")


@keys_cli.command("create")
def keys_create(tenant: Annotated[str, typer.Argument(help="tenant name (created if new)")],
                name: Annotated[str, typer.Option(help="a label for the key")] = "default",
                admin: Annotated[bool, typer.Option("--admin", help="may manage keys over the API")] = False) -> None:
    """Create an API key for a new or existing tenant and print it (shown only once)."""
    from app.auth import create_api_key
    from app.db import session_scope

    with session_scope(_settings().resolved_database_url) as db:
        row, plain = create_api_key(db=db, tenant_name=tenant, key_name=name, is_admin=admin)
        console.print(f"[green]created key {row.id} ({row.prefix}…) for tenant {tenant!r}"
                      f"{' with admin scope' if admin else ''}[/green]", highlight=False)
    print(plain)


@keys_cli.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None) -> None:
    """List API keys (their ids and prefixes, never the keys)."""
    from app.auth import list_api_keys
    from app.db import session_scope

    table = Table()
    for col in ("id", "tenant", "name", "prefix", "admin", "created", "revoked"):
        table.add_column(col)
    with session_scope(_settings().resolved_database_url) as db:
        for k in list_api_keys(db=db, tenant_name=tenant):
            table.add_row(k.id, k.tenant.name, k.name, k.prefix + "…", "yes" if k.is_admin else "",
                          f"{k.created_at:%Y-%m-%d %H:%M}", f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    console.print(table)


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (see `keys list`)")]) -> None:
    """Revoke an API key; it stops working at once."""
    from app.auth import revoke_api_key
    from app.db import session_scope

    with session_scope(_settings().resolved_database_url) as db:
        row = revoke_api_key(db=db, key_id=key_id)
    if row is None:
        console.print(f"[red]no key {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"key {key_id} revoked")


def ensure_dev_key() -> tuple[str, bool]:
    """Return the dev API key and whether it was just created (with DATA_DIR/dev-api-key)."""
    from app.auth import register_api_key
    from app.db import session_scope

    settings = _settings()
    key_file = settings.data_dir / "dev-api-key"
    plain = settings.dev_api_key or (key_file.read_text().strip() if key_file.exists() else None)
    created = not plain
    if created:
        plain = "dk_" + secrets.token_urlsafe(32)
    key_file.write_text(plain + "\n")
    key_file.chmod(0o600)
    with session_scope(settings.resolved_database_url) as db:
        register_api_key(db=db, tenant_name="dev", plain_key=plain)
    return plain, created


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


@cli.command()
def api(host: Annotated[str | None, typer.Option()] = None, port: Annotated[int | None, typer.Option()] = None) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    settings = _settings()
    uvicorn.run("app.main:app", host=host or settings.host, port=port or settings.port, proxy_headers=True)


@cli.command()
def worker(concurrency: Annotated[int, typer.Option("-c", help="processes; use one per GPU")] = 1,
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


@cli.command()
def up(host: Annotated[str | None, typer.Option()] = None, port: Annotated[int | None, typer.Option()] = None) -> None:
    """Start everything on this machine: migrate, a dev API key, a job worker, a webhook worker, the API."""
    import uvicorn

    settings = _settings()
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


def _console_callbacks():  # noqa: ANN202  (torch is imported only for local training)
    from app.training import TrainCallbacks

    class ConsoleCallbacks(TrainCallbacks):
        """Print stage starts and epochs of a local `distillery train` run."""

        def on_stage_start(self, *, stage: str, epochs: int) -> None:
            console.print(f"[bold]{stage}[/bold]: {epochs} epochs")

        def on_epoch_end(self, *, stage: str, epoch: int, epochs: int, progress: float,
                         metrics: dict[str, float], losses: dict[str, float], seconds: float) -> None:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            console.print(f"  {stage} {epoch}/{epochs}  {progress:6.1%}  {shown}  ({seconds:.2f}s)", highlight=False)

        def on_note(self, *, message: str) -> None:
            console.print(f"[yellow]data:[/yellow] {message}", highlight=False)

    return ConsoleCallbacks()


def _load_spec_file(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc


@cli.command()
def train(spec_path: Annotated[Path, typer.Argument(help="job spec (JSON)")],
          out: Annotated[Path, typer.Option("--out", help="where the artifacts go")] = Path("out"),
          threads: Annotated[int | None, typer.Option(help="torch threads (default: all cores)")] = None) -> None:
    """Run a spec in this process, no server: same artifacts as a job."""
    from pydantic import ValidationError

    if threads:
        import torch

        torch.set_num_threads(threads)

    from app.training import JobSpec, tracked
    from app.training import train as run_training

    try:
        spec = JobSpec.model_validate(_load_spec_file(spec_path))
    except ValidationError as exc:
        console.print(f"[red]invalid spec[/red]\n{exc}")
        raise typer.Exit(2) from exc
    workdir, settings = out / ".work", _settings()
    with tracked(spec, _console_callbacks(), tracking_uri=settings.mlflow_tracking_uri, workdir=workdir,
                 default_experiment=settings.mlflow_experiment, job_id=None) as callbacks:
        result = run_training(spec, workdir, callbacks=callbacks,
                              checkpoint_interval=settings.checkpoint_interval_seconds)
    out.mkdir(parents=True, exist_ok=True)
    for path in result.artifacts:
        shutil.copyfile(path, out / path.name)
    shutil.rmtree(workdir, ignore_errors=True)
    _print_results(result.results)
    console.print(f"artifacts in {out}/: " + ", ".join(p.name for p in result.artifacts))


def _print_results(results: dict[str, Any]) -> None:
    table = Table(title="teacher vs student vs baseline (test split)")
    for col in ("task", "metric", "teacher", "student", "baseline"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for task, row in results["tasks"].items():
        table.add_row(task, row["metric"], fmt(row.get("teacher")), fmt(row.get("student")), fmt(row.get("baseline")))
    console.print(table)
    params = results.get("params", {})
    if params:
        console.print(f"params: teacher {params.get('teacher')}, student {params.get('student')}")


@contextmanager
def _client(url: str, api_key: str) -> Iterator[Any]:
    """Yield an API client; a problem+json answer or an unreachable server becomes a one-line error."""
    import httpx

    from app.client import ApiError, Client

    if not api_key:
        raise typer.BadParameter("no API key: pass --api-key or set DISTILLERY_API_KEY")
    try:
        with Client(url, api_key) as client:
            yield client
    except ApiError as exc:
        console.print(f"[red]{exc.status} {exc.code}[/red]: {exc.detail}", highlight=False)
        for err in exc.problem.get("errors") or []:
            console.print(f"  {err.get('field')}: {err.get('message')}", highlight=False)
        raise typer.Exit(1) from exc
    except httpx.TransportError as exc:
        console.print(f"[red]cannot reach {url}[/red]: {exc}", highlight=False)
        raise typer.Exit(1) from exc


@cli.command()
def submit(spec_path: Annotated[Path, typer.Argument(help="job spec (JSON)")],
           wait: Annotated[bool, typer.Option("--wait", help="follow progress until the job ends")] = False,
           url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Submit a job spec to the server."""
    with _client(url, api_key) as client:
        job = client.submit(_load_spec_file(spec_path))
        console.print(f"job {job.id} {job.status}", highlight=False)
        if not wait:
            print(job.id)
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task(job.status, total=1.0)

            def show(j: "JobOut") -> None:
                m = j.metrics or {}
                tail = "  ".join(f"{k}={v:.3f}" for k, v in (m.get("metrics") or {}).items())
                epoch = f" {m['epoch']}/{m['epochs']}" if m else ""
                bar.update(task, completed=j.progress, description=f"{j.status} {j.stage or ''}{epoch} {tail}")

            job = client.wait(job.id, on_update=show)
        console.print(f"job {job.id} {job.status}", highlight=False)
        if job.status == JobStatus.SUCCEEDED:
            _print_results(client.results(job.id))
        else:
            if job.error is not None:
                console.print(f"[red]{job.error.code}[/red]: {job.error.message}", highlight=False)
            raise typer.Exit(1)


files_cli = typer.Typer(help="Upload and list files (datasets, transfer sets, teachers).", no_args_is_help=True)
cli.add_typer(files_cli, name="files")


@files_cli.command("upload")
def files_upload(path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
                 purpose: Annotated[str, typer.Option(help="dataset | transfer_set | teacher_weights | "
                                                           "teacher_onnx | teacher_outputs | teacher_torchscript")],
                 url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Upload a file; prints its id (use it in a job spec)."""
    with _client(url, api_key) as client:
        row = client.upload(path, purpose=purpose)
    console.print(f"{row.id}  {row.purpose}  {row.size} bytes  sha256 {row.sha256[:12]}…", highlight=False)


@files_cli.command("list")
def files_list(url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """List uploaded files."""
    with _client(url, api_key) as client:
        rows = client.files()
    for row in rows:
        console.print(f"{row.id}  {row.purpose:<16} {row.size:>12}  {row.filename}", highlight=False)


@cli.command()
def events(job_id: str, follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
           after: Annotated[int, typer.Option(help="start after this sequence number")] = 0,
           url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Print a job's events (with --follow, live until the job ends)."""
    with _client(url, api_key) as client:
        stream = client.follow(job_id, after=after) if follow else client.events(job_id, after=after, limit=1000).data
        for event in stream:
            console.print(f"{event.seq:>5} {event.kind:<15} {json.dumps(event.data)}", highlight=False)


@cli.command()
def validate(spec_path: Annotated[Path, typer.Argument(help="job spec (JSON)")],
             url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Dry-run a spec on the server: files, cross-references, one batch through every model."""
    with _client(url, api_key) as client:
        body = client.validate(_load_spec_file(spec_path))
    summary = body.summary
    params = summary["params"]
    console.print(f"[green]valid[/green]  spec sha256 {body.spec_sha256[:16]}…", highlight=False)
    ratio = summary.get("compression_ratio")
    console.print(f"params: teachers {params['teacher']}, student {params['student']}"
                  + (f", compression {ratio}x" if ratio else ""), highlight=False)
    for stage in summary["stages"]:
        console.print(f"  {stage['name']}: {stage['epochs']} epochs x {stage['steps_per_epoch']} steps "
                      f"(batch {stage['batch_size']})", highlight=False)
    console.print(f"teacher cache ~{summary['teacher_cache_bytes_estimate'] / 1e6:.1f} MB", highlight=False)


@cli.command()
def status(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Show a job's status and progress."""
    with _client(url, api_key) as client:
        print(client.job(job_id).model_dump_json(indent=2))


@cli.command()
def cancel(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Cancel a job."""
    with _client(url, api_key) as client:
        job = client.cancel(job_id)
    console.print(f"job {job_id}: {job.status}{' (cancel requested)' if job.status == JobStatus.RUNNING else ''}")


@cli.command()
def download(job_id: str, out: Annotated[Path | None, typer.Option("--out")] = None,
             url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Download every artifact of a job, checking each sha256."""
    out = out or Path(job_id)
    with _client(url, api_key) as client:
        paths = client.download_all(job_id, out)
    for p in paths:
        console.print(f"{p}  ({p.stat().st_size} bytes, sha256 ok)", highlight=False)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
