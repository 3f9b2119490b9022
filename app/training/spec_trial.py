"""The `trial` section: a search trial's job runs only what the search ranks trials by."""

from typing import Literal

from pydantic import Field, model_validator

from app.training.spec_sections import _error, _Strict

# What a light trial stores instead of the exports: the student stage(s), to finish it later.
TRIAL_STATE_NAME = "trial-state.pt"


class TrialSpec(_Strict):
    """A search's child job. `light`: train the student and measure it on validation only (no
    baseline, test evaluation, exports, report or TensorBoard archive) and keep its trained
    state as the artifact trial-state.pt. `finalise`: load that state from the light job
    `from_job` (same spec otherwise, same tenant) and run the rest of an ordinary job."""

    mode: Literal["light", "finalise"]
    # light: measure the student's CPU latency (on validation rows) for a goal that uses it
    latency: bool = False
    from_job: str | None = Field(default=None, pattern=r"^job_[0-9a-f]{32}$")

    @model_validator(mode="after")
    def _source_for_finalise(self) -> "TrialSpec":
        if (self.mode == "finalise") != (self.from_job is not None):
            raise _error("trial_source", "trial.from_job: required with mode 'finalise' (the light "
                                         "trial's job id), and only then")
        return self
