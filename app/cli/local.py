"""`distillery train`: run a spec in this process, no server, same artifacts as a job."""

import shutil
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import console, current_settings, load_spec_file, print_results


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
        spec = JobSpec.model_validate(load_spec_file(spec_path))
    except ValidationError as exc:
        console.print(f"[red]invalid spec[/red]\n{exc}")
        raise typer.Exit(2) from exc
    workdir, settings = out / ".work", current_settings()
    with tracked(spec, _console_callbacks(), tracking_uri=settings.mlflow_tracking_uri, workdir=workdir,
                 default_experiment=settings.mlflow_experiment, job_id=None) as callbacks:
        result = run_training(spec, workdir, callbacks=callbacks,
                              checkpoint_interval=settings.checkpoint_interval_seconds)
    out.mkdir(parents=True, exist_ok=True)
    for path in result.artifacts:
        shutil.copyfile(path, out / path.name)
    shutil.rmtree(workdir, ignore_errors=True)
    print_results(result.results)
    console.print(f"artifacts in {out}/: " + ", ".join(p.name for p in result.artifacts))
