"""Each classic mistake in a job spec is a 422 naming the field at fault; nothing is stored."""

import copy
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.conftest import tiny_spec


def _set(path: str, value: object) -> Callable[[dict], None]:
    def apply(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return apply


MISTAKES = {
    "unknown task in a teacher": (_set("teachers.0.tasks", ["digit", "colour"]), "body.teachers", "colour"),
    "teacher with no tasks": (_set("teachers.0.tasks", []), "body.teachers", "tasks"),
    "negative epochs": (_set("training.epochs", -3), "body.training.epochs", "greater than or equal"),
    "temperature 0": (_set("distillation.temperature", 0), "body.distillation.temperature", "greater than"),
    "huge batch": (_set("training.batch_size", 10**9), "body.training.batch_size", "less than or equal"),
    "unknown architecture": (_set("student.type", "transformer9000"), "body.student", "type"),
    "num_classes disagrees with the dataset": (_set("tasks.0.num_classes", 7), "body.tasks", "10 classes"),
    "unknown dataset": (_set("dataset.builtin", "imagenet"), "body.dataset.builtin", "imagenet"),
    "alpha above 1": (_set("distillation.alpha", 1.5), "body.distillation.alpha", "less than or equal"),
    "unknown field": (_set("training.epohcs", 3), "body.training.epohcs", "Extra inputs"),
    "duplicate task names": (_set("tasks.1.name", "digit"), "body.tasks", "duplicate"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_malformed_spec_is_422_with_the_field(mistake: str, client: TestClient, auth: dict) -> None:
    apply, field, word = MISTAKES[mistake]
    spec = copy.deepcopy(tiny_spec())
    apply(spec)
    r = client.post("/v1/jobs", json=spec, headers=auth)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    errors = r.json()["errors"]
    assert any(e["field"].startswith(field) for e in errors), errors
    assert word.lower() in r.json()["detail"].lower(), r.json()["detail"]
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_body_that_is_not_json_is_422(client: TestClient, auth: dict) -> None:
    r = client.post("/v1/jobs", content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
