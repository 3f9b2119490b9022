"""TensorBoard event files of a job: one run (folder) per stage, step = epoch, written by a
callback as the epochs end and zipped into the `tensorboard.zip` artifact.

Tags (the same in every stage's run, so TensorBoard overlays teacher, student and baseline):
`validation/<task>.<metric>` (the epoch's validation primary metric, as in metrics.csv),
`loss/<term>` (the epoch's sample-weighted loss terms, "total" included), `weight/<task>`
(learned task weights) and `time/epoch_seconds`. A stage's run folder is its name with ":" made
"." (`teacher.<name>`, `student.trunk`, `student`, `baseline`): names cannot contain dots.
"""

import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from app.training.callbacks import TrainCallbacks
from app.training.checkpoint import atomic_path
from app.training.evaluate import PRIMARY_METRICS
from app.training.spec import TaskSpec

ARCHIVE_NAME = "tensorboard.zip"


def run_name(stage: str) -> str:
    """Return the TensorBoard run (folder) name of a stage."""
    return stage.replace(":", ".")


def scalar_tags(*, metrics: dict[str, float], losses: dict[str, float], seconds: float,
                metric_names: dict[str, str]) -> dict[str, float]:
    """Return one epoch's scalars by tag (see the module docstring)."""
    scalars = {f"validation/{task}.{metric_names[task]}": value for task, value in metrics.items()}
    for name, value in losses.items():  # learned weights arrive as "weight.<task>"
        scalars[f"weight/{name[len('weight.'):]}" if name.startswith("weight.") else f"loss/{name}"] = value
    scalars["time/epoch_seconds"] = seconds
    return scalars


class TensorBoardWriter(TrainCallbacks):
    """Write each stage's epochs to `logdir/<run>/events.out.tfevents.*` as they end.

    A resumed job appends to the folders its earlier attempt left: the first epoch a stage writes
    in this process opens its writer with `purge_step` = that epoch, so TensorBoard drops what the
    crashed attempt wrote past the checkpoint it resumed from. `fresh` (no checkpoint: the job
    starts from nothing) removes whatever an earlier, unrelated run left in `logdir`.
    """

    def __init__(self, logdir: Path, *, tasks: Sequence[TaskSpec], fresh: bool) -> None:
        self.logdir = Path(logdir)
        self.metric_names = {task.name: PRIMARY_METRICS[task.kind][0] for task in tasks}
        self._writers: dict[str, Any] = {}  # stage -> tensorboardX SummaryWriter
        if fresh and self.logdir.exists():
            for path in sorted(self.logdir.rglob("*"), reverse=True):  # files before their folders
                path.rmdir() if path.is_dir() else path.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def on_epoch_end(self, *, stage: str, epoch: int, epochs: int, progress: float,
                     metrics: dict[str, float], losses: dict[str, float], seconds: float) -> None:
        writer = self._writers.get(stage)
        if writer is None:
            from tensorboardX import SummaryWriter  # imported by the first epoch only

            # flush_secs: a live `tensorboard --logdir` over the workdir sees epochs within 10 s.
            writer = self._writers[stage] = SummaryWriter(
                logdir=str(self.logdir / run_name(stage)), purge_step=epoch, flush_secs=10)
        for tag, value in scalar_tags(metrics=metrics, losses=losses, seconds=seconds,
                                      metric_names=self.metric_names).items():
            writer.add_scalar(tag, value, global_step=epoch)

    def close(self) -> None:
        """Flush and close every stage's event file."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def archive(self, path: Path) -> Path:
        """Close the event files and zip `logdir` (runs at the zip's top level) into `path`."""
        self.close()
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(p for p in self.logdir.rglob("*") if p.is_file()):
                archive.write(file, file.relative_to(self.logdir).as_posix())
        return path
