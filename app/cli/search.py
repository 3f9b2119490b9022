"""`distillery search submit | status | cancel`: a goal in, the trials and the front out."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.live import Live
from rich.table import Table

from app.cli.common import console, load_spec_file
from app.cli.remote import DEFAULT_URL, KeyOpt, UrlOpt, _client

if TYPE_CHECKING:
    from app.search_schemas import SearchOut

search_cli = typer.Typer(help="Target-driven searches: trials as child jobs, the Pareto front of students.",
                         no_args_is_help=True)


def _fmt(value: object, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def search_table(search: "SearchOut") -> Table:
    """Every trial: state, mean validation retention, params, latency, params sampled; * = on the front."""
    done = sum(t.state not in ("running",) for t in search.trials)
    total = search.request.get("trials", len(search.trials))
    table = Table(title=f"search {search.id} {search.status}: {done}/{total} trials ended, "
                        f"front {search.pareto}, best {_fmt(search.best)}")
    for column in ("#", "state", "mean retention", "params", "latency us", "test retention", "job", "params sampled"):
        table.add_column(column)
    for trial in search.trials:
        found, test = trial.measures or {}, trial.test or {}
        mark = "*" if trial.number in search.pareto else ""
        sampled = ", ".join(f"{k.split('.')[-1]}={_fmt(v, 3)}" for k, v in trial.params.items())
        table.add_row(f"{trial.number}{mark}", trial.state, _fmt(found.get("mean_retention")),
                      _fmt(found.get("params")), _fmt(found.get("latency_us"), 1),
                      _fmt(test.get("mean_retention")), trial.job_id or "-", sampled)
    return table


@search_cli.command("submit")
def submit(goal_path: Annotated[Path, typer.Argument(help="search goal (JSON: base, space, goal, trials...)")],
           wait: Annotated[bool, typer.Option("--wait", help="show a live table of the trials until it ends")] = False,
           url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Submit a search goal to the server."""
    with _client(url, api_key) as client:
        search = client.submit_search(load_spec_file(goal_path))
        console.print(f"search {search.id} {search.status}", highlight=False)
        if not wait:
            print(search.id)
            return
        with Live(search_table(search), console=console, refresh_per_second=2) as live:
            search = client.wait_search(search.id, on_update=lambda s: live.update(search_table(s)))
        if search.status != "succeeded":
            raise typer.Exit(1)


@search_cli.command("status")
def status(search_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Show a search's trials and its front."""
    with _client(url, api_key) as client:
        console.print(search_table(client.search(search_id)))


@search_cli.command("cancel")
def cancel(search_id: str, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = "") -> None:
    """Cancel a search and its running trials."""
    with _client(url, api_key) as client:
        search = client.cancel_search(search_id)
        console.print(f"search {search.id} {search.status}, cancel requested", highlight=False)
