"""Exceptions the engine raises to its callers (worker, CLI): user-facing, no traceback text."""


class TrainingCancelled(Exception):
    """The caller asked to stop (TrainCallbacks.should_stop returned True)."""


class TrainingError(Exception):
    """A training failure the user can act on, with a stable machine-readable code."""

    def __init__(self, *, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # e.g. "diverged", "invalid_data", "device_unavailable"
        self.message = message

    def __repr__(self) -> str:
        return f"TrainingError(code={self.code!r}, message={self.message!r})"
