"""The ``distillery`` command: run the service, manage keys, train locally, talk to a server.

Each group lives in its own module (``serve``, ``keys``, ``local``, ``remote``); this one lists
every command in one place.
"""

import typer

from app.cli import keys, local, remote, search, serve
from app.cli.serve import ROOT, run_migrations, webhook_worker_argv, worker_argv

__all__ = ["ROOT", "cli", "main", "run_migrations", "webhook_worker_argv", "worker_argv"]

cli = typer.Typer(help="Distillery: multi-task knowledge distillation as a service.", no_args_is_help=True)
for command in (serve.up, serve.api, serve.worker, serve.migrate,  # run the service
                local.train,  # no server
                remote.submit, remote.validate, remote.status, remote.events, remote.cancel, remote.download):
    cli.command()(command)
cli.add_typer(keys.keys_cli, name="keys")
cli.add_typer(remote.files_cli, name="files")
cli.add_typer(search.search_cli, name="search")


def main() -> None:
    cli()
