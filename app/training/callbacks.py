"""TrainCallbacks: the hooks a caller of train() overrides (the worker writes events and
heartbeats, the CLI prints); every hook is a no-op here. CallbackChain calls several in turn."""

from pathlib import Path
from typing import Any


class TrainCallbacks:
    """Hooks the caller overrides; all no-ops here."""

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        """Called when a stage starts or resumes."""

    def on_epoch_end(self, *, stage: str, epoch: int, epochs: int, progress: float,
                     metrics: dict[str, float], losses: dict[str, float], seconds: float) -> None:
        """Called after each epoch; progress is the job's fraction done (0..1).

        `metrics` are the validation metrics of this epoch, or empty on an epoch that is not
        evaluated (training.eval_every). The checkpoint is written in the background: train()
        waits for it before it returns or raises, so after a crash inside this hook the epoch
        is still on disk.
        """

    def should_stop(self) -> bool:
        """Return True to cancel; checked between optimisation steps."""
        return False

    def on_note(self, *, message: str) -> None:
        """Called with each note about the data (rows dropped, values imputed, labels encoded)
        and each diagnostic about the results (results.json "diagnostics")."""

    def on_train_end(self, *, results: dict[str, Any], artifacts: list[Path]) -> None:
        """Called once the job's artifacts are written, with results.json's content and the files."""


class CallbackChain(TrainCallbacks):
    """Call each hook of several callbacks in the order given; stop when any of them says so."""

    def __init__(self, *callbacks: TrainCallbacks) -> None:
        self.callbacks = callbacks

    def on_stage_start(self, *, stage: str, epochs: int) -> None:
        for callback in self.callbacks:
            callback.on_stage_start(stage=stage, epochs=epochs)

    def on_epoch_end(self, *, stage: str, epoch: int, epochs: int, progress: float,
                     metrics: dict[str, float], losses: dict[str, float], seconds: float) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(stage=stage, epoch=epoch, epochs=epochs, progress=progress,
                                  metrics=metrics, losses=losses, seconds=seconds)

    def should_stop(self) -> bool:
        return any(callback.should_stop() for callback in self.callbacks)

    def on_note(self, *, message: str) -> None:
        for callback in self.callbacks:
            callback.on_note(message=message)

    def on_train_end(self, *, results: dict[str, Any], artifacts: list[Path]) -> None:
        for callback in self.callbacks:
            callback.on_train_end(results=results, artifacts=artifacts)
