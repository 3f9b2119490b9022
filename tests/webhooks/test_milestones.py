"""The notify section of a spec and the retention a milestone compares with it."""

import pytest
from pydantic import ValidationError

from app.training.spec import JobSpec
from app.webhooks.milestones import retention
from tests.conftest import tiny_spec


def test_notify_is_optional_and_left_out_of_specs_without_it() -> None:
    plain = JobSpec.model_validate(tiny_spec()).model_dump(mode="json")
    assert "notify" not in plain  # old specs keep their stored form and their sha256
    asked = JobSpec.model_validate(tiny_spec(notify={"retention": 0.95})).model_dump(mode="json")
    assert asked["notify"] == {"retention": 0.95}


@pytest.mark.parametrize("notify", [{"retention": 0}, {"retention": -0.5}, {"retention": 3},
                                    {"retention": "high"}, {"retention": 0.9, "every": 1}])
def test_a_bad_notify_names_its_field(notify: dict) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(tiny_spec(notify=notify))
    assert all(error["loc"][0] == "notify" for error in info.value.errors())


def test_retention_is_inverted_when_lower_is_better() -> None:
    assert retention(student=0.9, teacher=1.0, higher_is_better=True) == pytest.approx(0.9)
    assert retention(student=2.0, teacher=1.0, higher_is_better=False) == pytest.approx(0.5)  # rmse twice the teacher's
    assert retention(student=0.5, teacher=0.0, higher_is_better=True) is None
    assert retention(student=0.0, teacher=0.0, higher_is_better=False) == 1.0
