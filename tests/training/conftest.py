"""Shared fixtures: the tiny example spec and one finished tiny run."""

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from app.training.loop import Result, train
from app.training.spec import JobSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def tiny_spec_dict(**sections: dict[str, Any]) -> dict[str, Any]:
    """Return the tiny example as a dict, with the given top-level sections updated."""
    spec = json.loads((EXAMPLES / "digits-mt-tiny.json").read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            spec[key] = {**spec.get(key, {}), **copy.deepcopy(value)}
        else:
            spec[key] = copy.deepcopy(value)
    return spec


def tiny_spec(**sections: dict[str, Any]) -> JobSpec:
    """Return the tiny example as a JobSpec, with the given top-level sections updated."""
    return JobSpec.model_validate(tiny_spec_dict(**sections))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    """Train the tiny example once; return its Result and workdir."""
    workdir = tmp_path_factory.mktemp("tiny-run")
    return train(tiny_spec(), workdir, job_id="job-tiny"), workdir
