"""Architecture zoo: shapes, parameter counts, the trunk tap, ONNX parity, spec validation."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError

from app.training.export import write_onnx
from app.training.models import ARCHITECTURES, build_model, count_params
from app.training.catalog import catalog
from app.training.spec import ArchSpec, JobSpec, TaskSpec
from tests.training.conftest import tiny_spec_dict

TASKS = [TaskSpec(name="kind", kind="multiclass", num_classes=3), TaskSpec(name="flag", kind="binary"),
         TaskSpec(name="tags", kind="multilabel", num_classes=4), TaskSpec(name="size", kind="regression")]
OUT = {"kind": 3, "flag": 1, "tags": 4, "size": 1}

# (arch, input shape without the batch axis)
CASES = [
    (ArchSpec(type="mlp", trunk=[16, 8], head=[4]), (5, 6)),
    (ArchSpec(type="cnn1d", channels=[4, 8], kernel_size=3, trunk=[6]), (40,)),
    (ArchSpec(type="cnn1d", channels=[4], kernel_size=5, trunk=[], head=[3]), (2, 40)),
    (ArchSpec(type="cnn2d", channels=[3, 5], kernel_size=3, trunk=[]), (1, 12, 12)),
    (ArchSpec(type="cnn2d", channels=[4], kernel_size=3, trunk=[7], dropout=0.2), (9, 9)),
]
IDS = ["mlp", "cnn1d-no-channel-axis", "cnn1d-channels", "cnn2d", "cnn2d-no-channel-axis"]


@pytest.mark.parametrize(("arch", "shape"), CASES, ids=IDS)
def test_heads_and_trunk_tap_have_the_right_shapes(arch: ArchSpec, shape: tuple[int, ...]):
    model = build_model(arch, input_shape=shape, tasks=TASKS).eval()
    logits, taps = model.forward_features(torch.randn(7, *shape))
    assert {task: tuple(z.shape) for task, z in logits.items()} == {t: (7, n) for t, n in OUT.items()}
    assert tuple(taps["trunk"].shape) == (7, model.trunk_features)
    with torch.no_grad():
        x = torch.randn(3, *shape)
        features = model.trunk(x)
        assert all(torch.equal(model.heads[t](features), z) for t, z in model(x).items())


def test_parameter_counts_follow_the_layer_sizes():
    cnn1d = build_model(CASES[1][0], input_shape=(40,), tasks=TASKS)
    convs = (1 * 4 * 3 + 4) + (4 * 8 * 3 + 8)
    heads = sum(6 * n + n for n in OUT.values())
    assert count_params(cnn1d) == convs + (8 * 6 + 6) + heads
    cnn2d = build_model(CASES[3][0], input_shape=(1, 12, 12), tasks=TASKS)
    convs = (1 * 3 * 9 + 3) + (3 * 5 * 9 + 5)
    assert count_params(cnn2d) == convs + sum(5 * n + n for n in OUT.values())
    assert cnn2d.trunk_features == 5  # no dense trunk: the pooled channels are the features


def test_a_missing_channel_axis_is_one_channel():
    arch = ArchSpec(type="cnn1d", channels=[4], kernel_size=3, trunk=[5])
    flat = build_model(arch, input_shape=(20,), tasks=TASKS)
    with_axis = build_model(arch, input_shape=(1, 20), tasks=TASKS)
    # the flat model's trunk starts with its Unflatten: its layer indices are one higher
    renamed = {}
    for name, tensor in flat.state_dict().items():
        if name.startswith("trunk."):
            _, index, rest = name.split(".", 2)
            name = f"trunk.{int(index) - 1}.{rest}"
        renamed[name] = tensor
    with_axis.load_state_dict(renamed)
    x = torch.randn(3, 20)
    with torch.no_grad():
        assert all(torch.allclose(flat(x)[t], z) for t, z in with_axis(x[:, None]).items())


def test_last_shared_layer_is_the_trunks_last_weighted_layer():
    mlp = build_model(ArchSpec(trunk=[8, 6]), input_shape=(4,), tasks=TASKS)
    assert mlp.last_shared_layer().weight.shape == (6, 8)
    cnn = build_model(ArchSpec(type="cnn2d", channels=[3, 5], trunk=[]), input_shape=(8, 8), tasks=TASKS)
    assert isinstance(cnn.last_shared_layer(), torch.nn.Conv2d)
    assert build_model(ArchSpec(trunk=[]), input_shape=(4,), tasks=TASKS).last_shared_layer() is None


@pytest.mark.parametrize(("arch", "shape"), CASES, ids=IDS)
def test_onnx_export_matches_pytorch_with_a_dynamic_batch(arch: ArchSpec, shape: tuple[int, ...],
                                                          tmp_path: Path):
    torch.manual_seed(0)
    model = build_model(arch, input_shape=shape, tasks=TASKS).eval()
    path = write_onnx(model, task_names=list(OUT), input_shape=shape, directory=tmp_path)
    session = ort.InferenceSession(str(path))
    for batch in (1, 5):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = model(x)
        got = session.run(None, {"x": x.numpy()})
        for name, value in zip(OUT, got, strict=True):
            assert value.shape == tuple(expected[name].shape)
            assert np.abs(value - expected[name].numpy()).max() <= 1e-4


def test_conv_fields_get_defaults_and_stay_out_of_an_mlp():
    assert ArchSpec(type="cnn1d").model_dump() == {
        "type": "cnn1d", "trunk": [64], "head": [], "dropout": 0.0, "channels": [32, 64],
        "kernel_size": 5}
    assert "channels" not in ArchSpec().model_dump(mode="json")
    stored = ArchSpec(type="cnn2d", channels=[8], kernel_size=3).model_dump(mode="json")
    assert ArchSpec.model_validate(stored).model_dump(mode="json") == stored


@pytest.mark.parametrize(("fields", "words"), [
    ({"type": "mlp", "channels": [8]}, ["channels", "only used by cnn1d, cnn2d, resnet and mobilenet"]),
    ({"type": "cnn1d", "kernel_size": 4}, ["odd"]),
    ({"type": "cnn1d", "channels": []}, ["at least 1"]),
    ({"type": "rnn"}, ["'mlp'", "'cnn1d'", "'cnn2d'", "'resnet'", "'transformer'"]),
])
def test_invalid_architectures_are_rejected(fields: dict, words: list[str]):
    with pytest.raises(ValidationError) as caught:
        ArchSpec.model_validate(fields)
    message = str(caught.value)
    assert all(word in message for word in words), message


def test_spec_rejects_an_architecture_that_does_not_fit_the_inputs():
    data = tiny_spec_dict(student={"type": "cnn2d", "channels": [4]})  # digits-mt rows are (64,)
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(data)
    [error] = caught.value.errors()
    assert error["loc"] == ("student",)
    assert "student.type: cnn2d takes inputs of rank 2 or 3" in error["msg"]
    data = tiny_spec_dict()
    data["teachers"][0]["source"]["train"]["arch"] = {"type": "cnn2d"}
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(data)
    assert "teachers[0].source.train.arch.type: cnn2d" in caught.value.errors()[0]["msg"]
    ok = tiny_spec_dict(student={"type": "cnn1d", "channels": [4], "kernel_size": 3, "trunk": [8]})
    assert JobSpec.model_validate(ok).student.type == "cnn1d"


def test_catalog_lists_every_architecture_with_its_tap():
    listed = catalog()["architectures"]
    assert set(listed) == set(ARCHITECTURES) == {"mlp", "cnn1d", "cnn2d", "mmoe", "ple", "resnet",
                                                 "mobilenet", "transformer"}
    assert all(entry["feature_taps"][0] == "trunk" for entry in listed.values())
    assert listed["mmoe"]["feature_taps"] == listed["ple"]["feature_taps"] == ["trunk", "task:<task>"]


def test_convolutional_teacher_and_student_train_and_export(tmp_path: Path):
    from app.training.datasets.registry import load_dataset
    from app.training.export import load_student
    from app.training.loop import train

    data = tiny_spec_dict(student={"type": "cnn1d", "channels": [4, 8], "kernel_size": 3,
                                   "trunk": [16], "head": [], "dropout": 0.0})
    data["teachers"][0]["source"]["train"].update(
        arch={"type": "cnn1d", "channels": [16, 32]}, epochs=6)
    data["training"]["epochs"] = 2
    spec = JobSpec.model_validate(data)
    results = train(spec, tmp_path).results
    assert results["tasks"]["digit"]["teacher"] > 0.3  # chance is 0.1; rows read as sequences
    student = load_student(tmp_path / "artifacts")
    assert isinstance(student.last_shared_layer(), torch.nn.Linear)
    x_test = load_dataset(spec.dataset, tasks=spec.tasks).x_test[:50]
    with torch.no_grad():
        expected = student(x_test)
    session = ort.InferenceSession(str(tmp_path / "artifacts" / "student.onnx"))
    for name, got in zip(["digit", "parity", "large"], session.run(None, {"x": x_test.numpy()}),
                         strict=True):
        assert np.abs(got - expected[name].numpy()).max() <= 1e-4


def test_the_feature_tap_is_the_same_point_in_training_and_in_eval_mode():
    """Teacher features are taken in eval mode: the tap must not be the output of a dropout.

    (Dropout between trunk layers still acts in training, as it must; one layer isolates the tap.)
    """
    tasks = [TaskSpec(name="a", kind="binary")]
    model = build_model(ArchSpec(trunk=[16], dropout=0.5), input_shape=[8], tasks=tasks)
    x = torch.randn(64, 8)
    model.train()
    _, training_taps = model.forward_features(x)
    training_logits, _ = model.forward_features(x)
    model.eval()
    eval_logits, eval_taps = model.forward_features(x)
    assert torch.equal(training_taps["trunk"], eval_taps["trunk"])
    assert not torch.equal(training_logits["a"], eval_logits["a"])  # the heads still see dropout
