"""JobSpec: the example validates, defaults are written back, errors name their field."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.training.catalog import catalog
from app.training.spec import JobSpec, spec_sha256
from tests.training.conftest import EXAMPLES, tiny_spec_dict


# The job spec of ARCHITECTURE.md, word for word.
ARCHITECTURE_EXAMPLE = """
{
  "name": "digits-multitask",
  "dataset": {"builtin": "digits-mt"},
  "tasks": [
    {"name": "digit",  "kind": "multiclass", "num_classes": 10},
    {"name": "parity", "kind": "multiclass", "num_classes": 2},
    {"name": "large",  "kind": "binary"}
  ],
  "teachers": [
    {"name": "digit-teacher", "tasks": ["digit"],
     "source": {"train": {"arch": {"type": "mlp", "hidden": [512, 512]}, "epochs": 40}}},
    {"name": "aux-teacher", "tasks": ["parity", "large"],
     "source": {"train": {"arch": {"type": "mlp", "hidden": [512, 512]}, "epochs": 40}}}
  ],
  "student": {"type": "mlp", "trunk": [64], "head": [32]},
  "distillation": {"strategy": "task_kd", "temperature": 4.0, "alpha": 0.5},
  "weighting": {"method": "equal"},
  "training": {"epochs": 30, "batch_size": 128, "lr": 0.002, "seed": 0},
  "baseline": true,
  "export": ["safetensors", "onnx"]
}
"""


def example() -> dict[str, Any]:
    return json.loads(ARCHITECTURE_EXAMPLE)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda path: path.name)
def test_every_example_validates(path):
    JobSpec.model_validate(json.loads(path.read_text()))


def errors_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(data)
    return caught.value.errors()


def test_architecture_example_validates_and_writes_defaults_back():
    spec = JobSpec.model_validate(example())
    dumped = spec.model_dump(mode="json")
    assert dumped["training"] == {"epochs": 30, "batch_size": 128, "lr": 0.002, "seed": 0,
                                  "weight_decay": 0.0, "device": "auto", "precision": "fp32", "input_noise": 0.0,
                                  "augment": None, "data_placement": "auto", "loader_workers": 0,
                                  "compile": False, "schedule": "constant", "warmup_steps": 0,
                                  "selection": "last", "early_stopping": None, "eval_every": 1,
                                  "deterministic": False}
    assert dumped["distillation"]["per_task"] == {}
    assert dumped["teachers"][0]["source"]["train"] == {
        "arch": {"type": "mlp", "trunk": [512, 512], "head": [], "dropout": 0.0},
        "epochs": 40, "lr": 0.002, "batch_size": 128, "weight_decay": 0.0, "dataset": None}
    assert dumped["student"]["dropout"] == 0.0
    assert JobSpec.model_validate(dumped) == spec  # the stored form validates to the same spec


def test_minimal_spec_gets_every_default():
    data = example()
    for key in ("distillation", "weighting", "training", "baseline", "export"):
        del data[key]
    dumped = JobSpec.model_validate(data).model_dump(mode="json")
    assert dumped["distillation"] == {
        "strategy": "task_kd", "terms": ["soft"], "temperature": 4.0, "alpha": 0.5, "per_task": {},
        "feature_weight": 1.0, "trunk_epochs": None, "label_fraction": 1.0, "online": False}
    assert dumped["transfer_set"] is None
    assert all(task["distill"] is True for task in dumped["tasks"])
    assert dumped["weighting"] == {"method": "equal", "weights": None}
    assert dumped["baseline"] is True
    assert dumped["export"] == ["safetensors", "onnx"]


def test_spec_sha256_is_canonical_and_stable():
    explicit = JobSpec.model_validate(JobSpec.model_validate(example()).model_dump(mode="json"))
    implicit = JobSpec.model_validate(dict(reversed(list(example().items()))))
    assert spec_sha256(explicit) == spec_sha256(implicit)
    assert len(spec_sha256(explicit)) == 64
    changed = example()
    changed["training"]["seed"] = 1
    assert spec_sha256(JobSpec.model_validate(changed)) != spec_sha256(implicit)


@pytest.mark.parametrize(("mutate", "loc", "words"), [
    (lambda d: d["teachers"][1]["tasks"].append("foo"), ("teachers",),
     ["teachers[1].tasks", "unknown task 'foo'"]),
    (lambda d: d["teachers"][1]["tasks"].remove("large"), ("teachers",),
     ["large", "not covered"]),
    (lambda d: d["distillation"].update(temperature=0), ("distillation", "temperature"), ["greater"]),
    (lambda d: d["distillation"].update(temperature=float("nan")), ("distillation", "temperature"),
     ["finite"]),
    (lambda d: d["distillation"].update(alpha=1.5), ("distillation", "alpha"), ["less than"]),
    (lambda d: d["dataset"].update(builtin="mnist"), ("dataset", "builtin"),
     ["unknown built-in dataset 'mnist'", "digits-mt"]),
    (lambda d: d["tasks"].append({"name": "colour", "kind": "binary"}), ("tasks",),
     ["tasks[3].name", "'colour'", "available: digit, parity, large"]),
    (lambda d: d["tasks"][1].update(num_classes=3), ("tasks",), ["tasks[1]", "2 classes"]),
    (lambda d: d["tasks"][2].update(kind="multiclass", num_classes=2), ("tasks",),
     ["tasks[2]", "binary"]),
    (lambda d: d["tasks"].append(dict(d["tasks"][0])), ("tasks",), ["duplicate", "digit"]),
    (lambda d: d["tasks"][0].pop("num_classes"), ("tasks", 0), ["num_classes is required"]),
    (lambda d: d["tasks"][0].update(num_classes=1), ("tasks", 0), [">= 2"]),
    (lambda d: d["tasks"][2].update(num_classes=2), ("tasks", 2), ["not used"]),
    (lambda d: d["tasks"][2].update(kind="regression"), ("tasks",), ["tasks[2]", "binary"]),
    (lambda d: d["distillation"].update(strategy="fitnets"), ("distillation", "strategy"),
     ["task_kd", "cascaded"]),
    (lambda d: d["teachers"][0]["source"].update(onnx={"file": "x"}),
     ("teachers", 0, "source"), ["exactly one teacher source", "train, onnx"]),
    (lambda d: d["teachers"][0]["source"]["train"]["arch"].update(trunk=[8]),
     ("teachers", 0, "source", "train", "arch"), ["either 'trunk' or 'hidden'"]),
    (lambda d: d["teachers"].append(dict(d["teachers"][0])), ("teachers",), ["duplicate teacher"]),
    (lambda d: d["distillation"].update(per_task={"nope": {"alpha": 0.1}}), ("distillation",),
     ["distillation.per_task", "'nope'"]),
    (lambda d: d.update(weighting={"method": "fixed"}), ("weighting",), ["weights are required"]),
    (lambda d: d.update(weighting={"method": "fixed", "weights": {"x": 1}}), ("weighting",),
     ["weighting.weights", "'x'"]),
    (lambda d: d["training"].update(batch_size=0), ("training", "batch_size"), ["greater"]),
    (lambda d: d["training"].update(device="tpu"), ("training", "device"), ["'cuda'"]),
    (lambda d: d.update(export=["onnx", "onnx"]), ("export",), ["twice"]),
    (lambda d: d.update(surprise=1), ("surprise",), ["Extra inputs"]),
])
def test_invalid_spec_errors_point_at_the_field(mutate, loc, words):
    data = example()
    mutate(data)
    errors = errors_of(data)
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == loc
    for word in words:
        assert word in errors[0]["msg"]


def test_independent_errors_are_all_reported():
    data = example()
    data["dataset"]["builtin"] = "nope"
    data["training"]["lr"] = -1
    assert {error["loc"] for error in errors_of(data)} == {("dataset", "builtin"), ("training", "lr")}


def test_per_task_overrides_and_fixed_weights():
    spec = JobSpec.model_validate(tiny_spec_dict(
        distillation={"per_task": {"digit": {"temperature": 2.0}, "large": {"alpha": 0.0}}},
        weighting={"method": "fixed", "weights": {"digit": 2.0}}))
    assert spec.kd_settings("digit") == (2.0, 0.5)
    assert spec.kd_settings("large") == (4.0, 0.0)
    assert spec.kd_settings("parity") == (4.0, 0.5)


def test_catalog_is_plain_json():
    listed = json.loads(json.dumps(catalog()))
    assert listed["datasets"]["digits-mt"]["tasks"]["large"]["kind"] == "binary"
    assert set(listed["strategies"]) == {"task_kd", "feature_kd", "cascaded", "transfer"}
    assert set(listed["teacher_sources"]) == {"train", "weights", "onnx", "torchscript", "outputs"}
    assert set(listed["weighting_methods"]) == {"equal", "fixed", "uncertainty", "dwa", "gradnorm"}
    assert "mlp" in listed["architectures"]
