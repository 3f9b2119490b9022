"""JobSpec cross-reference checks of the strategies, teacher sources and transfer sets."""

from typing import Any

import pytest
from pydantic import ValidationError

from app.training.spec import JobSpec
from tests.training.conftest import tiny_spec_dict

ONNX = {"onnx": {"file": "t.onnx"}}
OUTPUTS = {"outputs": {"file": "t.npz"}}


def with_source(data: dict[str, Any], index: int, source: dict[str, Any]) -> dict[str, Any]:
    data["teachers"][index]["source"] = source
    return data


@pytest.mark.parametrize(("mutate", "loc", "words"), [
    (lambda d: d["teachers"].pop(1), ("teachers",),
     ["parity, large not covered", "\"distill\": false"]),
    (lambda d: with_source(d, 0, ONNX) and d["distillation"].update(strategy="feature_kd"),
     ("distillation",), ["teachers[0].source.onnx has none"]),
    (lambda d: with_source(d, 1, OUTPUTS) and d["distillation"].update(terms=["soft", "feature"]),
     ("distillation",), ["teachers[1].source.outputs has none"]),
    (lambda d: d["distillation"].update(strategy="transfer"), ("distillation",),
     ["'transfer' needs a source-domain teacher"]),
    (lambda d: d["distillation"].update(trunk_epochs=3), ("distillation",), ["only used by 'cascaded'"]),
    (lambda d: d["distillation"].update(terms=["soft", "soft"]), ("distillation",), ["twice"]),
    (lambda d: with_source(d, 1, OUTPUTS) and d["distillation"].update(online=True),
     ("distillation",), ["distillation.online", "teachers[1]"]),
    (lambda d: d["distillation"].update(label_fraction=0) or [t["source"]["train"].update(dataset="mnist8x8-mt") for t in d["teachers"]], ("baseline",), ["set baseline to false"]),
    (lambda d: d.update(transfer_set={"generate": 100}), ("transfer_set",),
     ["transfer_set.generate", "'digits-mt' cannot generate", "mnist1d-mt"]),
    (lambda d: d.update(transfer_set={"generate": 10, "file": "x.npz"}), ("transfer_set",),
     ["exactly one of"]),
    (lambda d: with_source(d, 1, OUTPUTS) and d.update(transfer_set={"file": "x.npz"}),
     ("transfer_set",), ["teachers[1]", "cannot label a transfer set"]),
    (lambda d: d["teachers"][0]["source"]["train"].update(dataset="mnist1d-mt"), ("teachers",),
     ["teachers[0].source.train.dataset", "inputs [40]", "[64]"]),
    (lambda d: d["teachers"][0]["source"]["train"].update(dataset="nope"),
     ("teachers", 0, "source", "train", "dataset"), ["unknown built-in dataset 'nope'"]),
    (lambda d: with_source(d, 0, {"weights": {"file": "w.safetensors"}}),
     ("teachers", 0, "source", "weights", "arch"), ["Field required"]),
    (lambda d: with_source(d, 0, {"onnx": {"file": "t.onnx", "outputs": "mixed"}}),
     ("teachers", 0, "source", "onnx", "outputs"), ["'by_task'", "'concatenated'"]),
])
def test_cross_reference_errors_name_the_field_path(mutate, loc, words):
    data = tiny_spec_dict()
    mutate(data)
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(data)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == loc
    for word in words:
        assert word in errors[0]["msg"], errors[0]["msg"]


def test_hard_label_only_tasks_need_no_teacher():
    data = tiny_spec_dict()
    data["teachers"].pop(1)
    for task in data["tasks"][1:]:
        task["distill"] = False
    spec = JobSpec.model_validate(data)
    assert [task.distill for task in spec.tasks] == [True, False, False]


def test_presets_write_their_terms_and_stage_settings_back():
    cascaded = JobSpec.model_validate(tiny_spec_dict(distillation={"strategy": "cascaded"}))
    assert cascaded.distillation.terms == ["soft"] and cascaded.distillation.trunk_epochs == 10
    feature = JobSpec.model_validate(tiny_spec_dict(distillation={"strategy": "feature_kd"}))
    assert feature.distillation.terms == ["feature"]
    combined = JobSpec.model_validate(tiny_spec_dict(
        distillation={"strategy": "feature_kd", "terms": ["soft", "feature"]}))
    dumped = combined.model_dump(mode="json")
    assert dumped["distillation"]["terms"] == ["soft", "feature"]
    assert JobSpec.model_validate(dumped) == combined


def test_every_source_validates_and_writes_defaults_back():
    data = tiny_spec_dict()
    data["teachers"][0]["source"] = {"onnx": {"file": "t.onnx"}}
    data["teachers"][1]["source"] = {"weights": {"file": "w.safetensors", "arch": {"hidden": [8]}}}
    dumped = JobSpec.model_validate(data).model_dump(mode="json")
    assert dumped["teachers"][0]["source"]["onnx"] == {"file": "t.onnx", "outputs": "by_task",
                                                       "features": None, "outputs_are": "logits"}
    assert dumped["teachers"][0]["weight"] == 1.0
    assert dumped["teachers"][1]["source"]["weights"]["arch"]["trunk"] == [8]


def test_input_noise_with_cached_teacher_targets_is_refused_naming_both_fields():
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(tiny_spec_dict(training={"input_noise": 0.1}))
    error = caught.value.errors()[0]
    assert error["loc"] == ("training",) and error["type"] == "noise_without_online"
    assert "training.input_noise" in error["msg"] and "distillation.online" in error["msg"]
    JobSpec.model_validate(tiny_spec_dict(training={"input_noise": 0.1},
                                          distillation={"online": True}))


def test_a_source_domain_teacher_must_name_another_dataset():
    data = tiny_spec_dict()
    data["teachers"][0]["source"]["train"]["dataset"] = "digits-mt"
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(data)
    error = caught.value.errors()[0]
    assert error["type"] == "source_is_target" and "teachers[0].source.train.dataset" in error["msg"]


def test_protocol_fields_validate():
    spec = JobSpec.model_validate(tiny_spec_dict(
        training={"schedule": "cosine", "warmup_steps": 5, "selection": "best",
                  "early_stopping": {"patience": 3}}, dataset={"validation_fraction": 0.2}))
    assert spec.training.early_stopping.min_delta == 0.0 and spec.dataset.validation_fraction == 0.2
    for bad in ({"schedule": "onecycle", "warmup_steps": 5}, {"selection": "worst"},
                {"early_stopping": {"patience": 0}}, {"eval_every": 0}):
        with pytest.raises(ValidationError):
            JobSpec.model_validate(tiny_spec_dict(training=bad))
    with pytest.raises(ValidationError):
        JobSpec.model_validate(tiny_spec_dict(dataset={"validation_fraction": 0.0}))


def test_label_fraction_zero_leaves_an_in_job_teacher_no_labels():
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(tiny_spec_dict(distillation={"label_fraction": 0.0}, baseline=False))
    assert caught.value.errors()[0]["type"] == "teacher_without_labels"
