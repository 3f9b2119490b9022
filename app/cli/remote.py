"""`distillery submit | validate | status | events | cancel | download | files`: talk to a server."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from app.cli.common import console, load_spec_file, print_results
from app.job_status import JobStatus

if TYPE_CHECKING:  # the CLI imports the client lazily: `distillery worker` should not pay for it
    from app.schemas import JobOut

UrlOpt = Annotated[str, typer.Option("--url", envvar="DISTILLERY_URL", help="server URL")]
KeyOpt = Annotated[str, typer.Option("--api-key", envvar="DISTILLERY_API_KEY", help="API key")]
DEFAULT_URL = "http://127.0.0.1:8000"


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


def submit(spec_path: Annotated[Path, typer.Argument(help="job spec (JSON)")],
           wait: Annotated[bool, typer.Option("--wait", help="follow progress until the job ends")] = False,
           url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Submit a job spec to the server."""
    with _client(url, api_key) as client:
        job = client.submit(load_spec_file(spec_path))
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
            print_results(client.results(job.id))
        else:
            if job.error is not None:
                console.print(f"[red]{job.error.code}[/red]: {job.error.message}", highlight=False)
            raise typer.Exit(1)


files_cli = typer.Typer(help="Upload and list files (datasets, transfer sets, teachers).", no_args_is_help=True)


@files_cli.command("upload")
def files_upload(path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
                 purpose: Annotated[str, typer.Option(help="dataset | transfer_set | teacher_weights | "
                                                           "teacher_onnx | teacher_outputs | teacher_torchscript | "
                                                           "teacher_hf")],
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


def events(job_id: str, follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
           after: Annotated[int, typer.Option(help="start after this sequence number")] = 0,
           url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Print a job's events (with --follow, live until the job ends)."""
    with _client(url, api_key) as client:
        stream = client.follow(job_id, after=after) if follow else client.events(job_id, after=after, limit=1000).data
        for event in stream:
            console.print(f"{event.seq:>5} {event.kind:<15} {json.dumps(event.data)}", highlight=False)


def validate(spec_path: Annotated[Path, typer.Argument(help="job spec (JSON)")],
             url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Dry-run a spec on the server: files, cross-references, one batch through every model."""
    with _client(url, api_key) as client:
        body = client.validate(load_spec_file(spec_path))
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


def status(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Show a job's status and progress."""
    with _client(url, api_key) as client:
        print(client.job(job_id).model_dump_json(indent=2))


def cancel(job_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Cancel a job."""
    with _client(url, api_key) as client:
        job = client.cancel(job_id)
    console.print(f"job {job_id}: {job.status}{' (cancel requested)' if job.status == JobStatus.RUNNING else ''}")


def download(job_id: str, out: Annotated[Path | None, typer.Option("--out")] = None,
             url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Download every artifact of a job, checking each sha256."""
    out = out or Path(job_id)
    with _client(url, api_key) as client:
        paths = client.download_all(job_id, out)
    for p in paths:
        console.print(f"{p}  ({p.stat().st_size} bytes, sha256 ok)", highlight=False)
