"""Zoo architectures mmoe, ple, resnet, mobilenet: shapes, taps, gates, probes, spec, export, training."""

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError

from app.training.catalog import ARCHITECTURES as CATALOG
from app.training.export import load_student, write_onnx, write_safetensors, write_student_config
from app.training.models import build_model, count_params
from app.training.spec import ArchSpec, JobSpec, TaskSpec
from tests.training.conftest import tiny_spec_dict

TASKS = [TaskSpec(name="kind", kind="multiclass", num_classes=3), TaskSpec(name="flag", kind="binary"),
         TaskSpec(name="tags", kind="multilabel", num_classes=4), TaskSpec(name="size", kind="regression")]
OUT = {"kind": 3, "flag": 1, "tags": 4, "size": 1}

# (arch, input shape without the batch axis)
CASES: list[tuple[dict[str, Any], tuple[int, ...]]] = [
    ({"type": "mmoe", "experts": 3, "expert": [8, 6], "head": [4]}, (5, 6)),
    ({"type": "ple", "levels": 1, "shared_experts": 1, "task_experts": 2, "expert": [6]}, (7,)),
    ({"type": "ple", "levels": 2, "expert": [8, 5], "head": [3], "dropout": 0.2}, (2, 4)),
    ({"type": "resnet", "channels": [4, 8], "blocks": [1, 2], "trunk": []}, (1, 12, 12)),
    ({"type": "resnet", "channels": [4], "blocks": [1], "trunk": [5]}, (9, 9)),
    ({"type": "mobilenet", "channels": [4, 6], "blocks": [1, 1], "expansion": 2, "trunk": []}, (3, 10, 10)),
    ({"type": "mobilenet", "channels": [4, 4], "blocks": [2, 1], "trunk": [6]}, (8, 8)),
]
IDS = ["mmoe", "ple-1-level", "ple-2-levels", "resnet", "resnet-no-channel-axis", "mobilenet",
       "mobilenet-no-channel-axis"]
GATED = ("mmoe", "ple")


def build(fields: dict[str, Any], shape: tuple[int, ...], tasks: list[TaskSpec] = TASKS) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ArchSpec.model_validate(fields), input_shape=shape, tasks=tasks)


def settle_batchnorm(model: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
    """Run two training batches so BatchNorm's running statistics are not the initial 0/1."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, *shape) * 2 + 1)
    return model.eval()


@pytest.mark.parametrize(("fields", "shape"), CASES, ids=IDS)
def test_outputs_taps_and_towers_have_the_right_shapes(fields: dict[str, Any], shape: tuple[int, ...]):
    model = build(fields, shape).eval()
    logits, taps = model.forward_features(torch.randn(7, *shape))
    assert {task: tuple(z.shape) for task, z in logits.items()} == {t: (7, n) for t, n in OUT.items()}
    assert tuple(taps["trunk"].shape) == (7, model.trunk_features)
    if fields["type"] in GATED:
        width = fields["expert"][-1]
        assert model.trunk_features == len(TASKS) * width
        for task in OUT:
            assert tuple(taps[f"task:{task}"].shape) == (7, width)
        # "trunk" is the tower inputs side by side, in task order
        assert torch.equal(taps["trunk"], torch.cat([taps[f"task:{t}"] for t in OUT], dim=1))
    else:
        assert set(taps) == {"trunk"}
    # the cascaded strategy freezes "model.heads.*": each task's tower lives there, nothing else
    head_params = {name for name, _ in model.named_parameters() if name.startswith("heads.")}
    assert {name.split(".")[1] for name in head_params} == set(OUT)
    assert isinstance(model.heads, torch.nn.ModuleDict)


@pytest.mark.parametrize("kind", ["resnet", "mobilenet"])
def test_image_archs_refuse_inputs_of_another_rank(kind: str):
    for shape in [(64,), (1, 2, 8, 8)]:
        with pytest.raises(ValueError, match=f"{kind} needs inputs of rank"):
            build({"type": kind, "channels": [4], "blocks": [1]}, shape)
    data = tiny_spec_dict(student={"type": kind, "channels": [4], "blocks": [1]})  # digits-mt: (64,)
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(data)
    assert f"student.type: {kind} takes inputs of rank 2 or 3" in caught.value.errors()[0]["msg"]


@pytest.mark.parametrize("kind", GATED)
def test_gated_archs_flatten_inputs_of_any_rank(kind: str):
    for shape in [(6,), (2, 3), (1, 2, 3)]:
        logits = build({"type": kind, "expert": [4]}, shape)(torch.randn(2, *shape))
        assert tuple(logits["kind"].shape) == (2, 3)


def test_mmoe_gates_are_a_softmax_per_task():
    model = build({"type": "mmoe", "experts": 5, "expert": [4]}, (3, 3))
    weights = model.gate_weights(torch.randn(6, 3, 3) * 10)
    assert set(weights) == set(OUT)
    for w in weights.values():
        assert tuple(w.shape) == (6, 5)
        assert bool((w >= 0).all())
        torch.testing.assert_close(w.sum(dim=1), torch.ones(6))


def test_mmoe_forward_matches_a_hand_computation():
    tasks = [TaskSpec(name="a", kind="binary"), TaskSpec(name="b", kind="regression")]
    model = build({"type": "mmoe", "experts": 2, "expert": [3], "head": []}, (2,), tasks)
    values = {  # expert e: relu(W x + b); gate k: softmax(G x + c); tower k: V h + d
        "experts.0.0.weight": [[1, 0], [0, 1], [1, 1]], "experts.0.0.bias": [0, 0, 0],
        "experts.1.0.weight": [[0, 1], [1, 0], [-1, -1]], "experts.1.0.bias": [0, 0, 1],
        "gates.a.weight": [[0, 0], [0, 0]], "gates.a.bias": [0, math.log(3)],
        "gates.b.weight": [[1, 0], [0, 1]], "gates.b.bias": [0, 0],
        "heads.a.0.weight": [[1, 2, 3]], "heads.a.0.bias": [0.5],
        "heads.b.0.weight": [[1, 1, 1]], "heads.b.0.bias": [0],
    }
    model.load_state_dict({name: torch.tensor(v, dtype=torch.float32) for name, v in values.items()})
    logits, taps = model.forward_features(torch.tensor([[1.0, -1.0]]))
    # experts: relu([1, -1, 0]) = [1, 0, 0] and relu([-1, 1, 0] + [0, 0, 1]) = [0, 1, 1]
    # gate a: softmax([0, ln 3]) = [1/4, 3/4]; gate b: softmax([1, -1]) = [s, 1 - s], s = sigmoid(2)
    s = 1 / (1 + math.exp(-2))
    torch.testing.assert_close(taps["task:a"], torch.tensor([[0.25, 0.75, 0.75]]))
    torch.testing.assert_close(taps["task:b"], torch.tensor([[s, 1 - s, 1 - s]]))
    torch.testing.assert_close(logits["a"], torch.tensor([[0.25 + 1.5 + 2.25 + 0.5]]))
    torch.testing.assert_close(logits["b"], torch.tensor([[s + 2 * (1 - s)]]))


def test_ple_levels_count_their_experts_and_gates():
    tasks = [TaskSpec(name="a", kind="binary"), TaskSpec(name="b", kind="binary")]
    one = build({"type": "ple", "levels": 1, "shared_experts": 1, "task_experts": 1, "expert": [3]},
                (4,), tasks)
    # 3 experts Linear(4, 3); 2 task gates Linear(4, 1 + 1); no shared gate; 2 towers Linear(3, 1)
    assert count_params(one) == 3 * (4 * 3 + 3) + 2 * (4 * 2 + 2) + 2 * (3 + 1)
    assert one.levels[0].shared_gate is None
    two = build({"type": "ple", "levels": 2, "shared_experts": 1, "task_experts": 1, "expert": [3]},
                (4,), tasks)
    # level 1 adds a shared gate Linear(4, 2 * 1 + 1); level 2 repeats level 1 on 3-wide inputs
    assert count_params(two) == count_params(one) + (4 * 3 + 3) + 3 * (3 * 3 + 3) + 2 * (3 * 2 + 2)
    assert two.levels[0].shared_gate is not None and two.levels[1].shared_gate is None
    x = torch.randn(5, 4)
    assert all(tuple(z.shape) == (5, 1) for z in two(x).values())
    # the first level's task-a experts reach task b only through the shared gate
    two.zero_grad()
    two(x)["b"].sum().backward()
    assert two.levels[0].task_experts["a"][0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("fields", "shape"), [c for c in CASES if c[0]["type"] not in GATED],
                         ids=[i for i, c in zip(IDS, CASES) if c[0]["type"] not in GATED])
def test_batchnorm_archs_are_deterministic_in_eval(fields: dict[str, Any], shape: tuple[int, ...]):
    model = settle_batchnorm(build(fields, shape), shape)
    x = torch.randn(6, *shape)
    with torch.no_grad():
        first, again, alone = model(x), model(x), model(x[:1])
    for task in OUT:
        assert torch.equal(first[task], again[task])
        # running statistics, not the batch's: one row answers the same alone
        torch.testing.assert_close(alone[task], first[task][:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("fields", "shape"), CASES, ids=IDS)
def test_gradnorm_probe_is_the_documented_layer_and_every_task_reaches_it(fields: dict[str, Any],
                                                                         shape: tuple[int, ...]):
    # Linear towers: a tiny ReLU tower can be off for every row at init, which would hide the probe
    model = build({**fields, "head": []}, shape)
    probe = model.last_shared_layer()
    if fields["type"] == "mmoe":
        assert probe is model.experts[-1][-2]
    elif fields["type"] == "ple":
        assert probe is model.levels[-1].shared[-1][-2]
    elif fields["trunk"]:
        assert isinstance(probe, torch.nn.Linear) and probe.out_features == fields["trunk"][-1]
    else:  # the last block's main path ends in its last conv (not the shortcut)
        assert probe is [m for m in model.trunk[-2].main if isinstance(m, torch.nn.Conv2d)][-1]
    logits = model(torch.randn(8, *shape))
    for task in OUT:
        (grad,) = torch.autograd.grad(logits[task].square().sum(), probe.weight, retain_graph=True)
        assert grad.abs().sum() > 0, task


@pytest.mark.parametrize(("fields", "shape"), CASES, ids=IDS)
def test_export_onnx_and_load_student_give_the_same_outputs(fields: dict[str, Any], shape: tuple[int, ...],
                                                            tmp_path: Path):
    arch = ArchSpec.model_validate(fields)
    model = settle_batchnorm(build(fields, shape), shape)
    write_safetensors(model, directory=tmp_path)
    write_student_config(arch=arch, tasks=TASKS, input_shape=shape, directory=tmp_path)
    write_onnx(model, task_names=list(OUT), input_shape=shape, directory=tmp_path)
    loaded = load_student(tmp_path)
    session = ort.InferenceSession(str(tmp_path / "student.onnx"))
    for batch in (1, 5):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected, reloaded = model(x), loaded(x)
        for name, got in zip(OUT, session.run(None, {"x": x.numpy()}), strict=True):
            assert got.shape == tuple(expected[name].shape)
            assert np.abs(got - expected[name].numpy()).max() <= 1e-4
            assert torch.equal(reloaded[name], expected[name])


@pytest.mark.parametrize(("fields", "stored"), [
    ({"type": "mmoe"}, {"type": "mmoe", "head": [], "dropout": 0.0, "experts": 4, "expert": [64]}),
    ({"type": "ple"}, {"type": "ple", "head": [], "dropout": 0.0, "expert": [64], "levels": 2,
                       "shared_experts": 2, "task_experts": 2}),
    ({"type": "resnet"}, {"type": "resnet", "trunk": [64], "head": [], "dropout": 0.0,
                          "channels": [32, 64], "blocks": [2, 2]}),
    ({"type": "mobilenet", "hidden": []}, {"type": "mobilenet", "trunk": [], "head": [], "dropout": 0.0,
                                           "channels": [32, 64], "blocks": [2, 2], "expansion": 4}),
    # the stored form of the older types is unchanged
    ({}, {"type": "mlp", "trunk": [64], "head": [], "dropout": 0.0}),
    ({"type": "cnn2d"}, {"type": "cnn2d", "trunk": [64], "head": [], "dropout": 0.0,
                         "channels": [32, 64], "kernel_size": 5}),
])
def test_type_fields_get_their_defaults_and_stay_out_of_other_types(fields: dict[str, Any],
                                                                   stored: dict[str, Any]):
    dumped = ArchSpec.model_validate(fields).model_dump(mode="json")
    assert dumped == stored
    assert ArchSpec.model_validate(dumped).model_dump(mode="json") == stored


@pytest.mark.parametrize(("fields", "words"), [
    ({"type": "mmoe", "trunk": [8]},
     ["trunk: only used by mlp, cnn1d, cnn2d, resnet and mobilenet, not mmoe"]),
    ({"type": "resnet", "experts": 2}, ["experts: only used by mmoe, not resnet"]),
    ({"type": "mlp", "expert": [4], "levels": 2}, ["expert: only used by mmoe and ple, not mlp",
                                                    "levels: only used by ple, not mlp"]),
    ({"type": "resnet", "kernel_size": 3}, ["kernel_size: only used by cnn1d and cnn2d, not resnet"]),
    ({"type": "ple", "expansion": 2}, ["expansion: only used by mobilenet, not ple"]),
    ({"type": "resnet", "channels": [8, 16, 32]}, ["blocks: one entry per stage", "(3), got 2"]),
    ({"type": "mmoe", "experts": 0}, ["experts", "greater than or equal to 1"]),
    ({"type": "ple", "levels": 9}, ["levels", "less than or equal to 8"]),
    ({"type": "mobilenet", "blocks": []}, ["blocks", "at least 1"]),
])
def test_fields_of_other_types_are_refused_by_name(fields: dict[str, Any], words: list[str]):
    with pytest.raises(ValidationError) as caught:
        ArchSpec.model_validate(fields)
    message = str(caught.value)
    assert all(word in message for word in words), message


def test_the_catalog_lists_exactly_the_fields_arch_spec_has():
    listed = {name for entry in CATALOG.values() for name in entry["fields"]}
    assert listed == set(ArchSpec.model_fields) - {"type"}
    assert set(ArchSpec.TYPE_FIELD_DEFAULTS) == listed - {"head", "dropout"}
    assert all({"head", "dropout"} <= set(entry["fields"]) for entry in CATALOG.values())
    assert CATALOG["mmoe"]["feature_taps"] == CATALOG["ple"]["feature_taps"] == ["trunk", "task:<task>"]


def metrics_are_numbers(results: dict[str, Any], roles: list[str]) -> None:
    for task, row in results["tasks"].items():
        for role in roles:
            assert isinstance(row[role], float) and math.isfinite(row[role]), (task, role, row)


def test_mmoe_student_learns_from_an_mmoe_teacher(tmp_path: Path):
    data = tiny_spec_dict(distillation={"terms": ["soft", "feature"]},  # the concatenated tap too
                          weighting={"method": "gradnorm"}, training={"epochs": 2})
    data["student"] = {"type": "mmoe", "experts": 2, "expert": [8], "head": [], "dropout": 0.1}
    for entry in data["teachers"]:
        entry["source"]["train"].update(arch={"type": "mmoe", "experts": 3, "expert": [16], "head": [8]})
    student = train_and_check_export(data, tmp_path, roles=["teacher", "student", "baseline"],
                                     input_shape=(64,))
    assert type(student).__name__ == "MMoE"


def digit_images(directory: Path) -> Path:
    """Write digits-mt as an NPZ of 8x8 one-channel images (its own train/test split); return it."""
    from app.training.datasets.registry import load_builtin

    digits = load_builtin("digits-mt")
    arrays = {"x": np.concatenate([digits.x_train, digits.x_test]).reshape(-1, 1, 8, 8),
              "split": np.array(["train"] * len(digits.x_train) + ["test"] * len(digits.x_test))}
    for task in ("digit", "parity", "large"):
        arrays[f"y_{task}"] = np.concatenate([digits.y_train[task], digits.y_test[task]])
    path = directory / "digit-images.npz"
    np.savez(path, **arrays)
    return path


def train_and_check_export(data: dict[str, Any], workdir: Path, *, roles: list[str],
                           input_shape: tuple[int, ...]) -> torch.nn.Module:
    """Train the job; check that its metrics are numbers and its ONNX answers as load_student."""
    from app.training.loop import train

    results = train(JobSpec.model_validate(data), workdir).results
    metrics_are_numbers(results, roles)
    student = load_student(workdir / "artifacts")
    x = torch.rand(3, *input_shape)
    session = ort.InferenceSession(str(workdir / "artifacts" / "student.onnx"))
    with torch.no_grad():
        expected = student(x)
    for name, got in zip(results["tasks"], session.run(None, {"x": x.numpy()}), strict=True):
        assert np.abs(got - expected[name].numpy()).max() <= 1e-4
    return student


def test_mobilenet_student_learns_from_an_mmoe_teacher_on_digit_images(tmp_path: Path):
    data = tiny_spec_dict(distillation={"terms": ["soft", "feature"]}, training={"epochs": 2})
    data["dataset"] = {"file": str(digit_images(tmp_path)), "format": "npz"}
    data["student"] = {"type": "mobilenet", "channels": [4, 8], "blocks": [1, 1], "expansion": 2,
                       "trunk": []}
    for entry in data["teachers"]:
        entry["source"]["train"].update(arch={"type": "mmoe", "experts": 2, "expert": [16]})
    student = train_and_check_export(data, tmp_path / "job", roles=["teacher", "student", "baseline"],
                                     input_shape=(1, 8, 8))
    assert isinstance(student.last_shared_layer(), torch.nn.Conv2d)


def test_resnet_student_learns_from_a_resnet_teacher_on_digit_images(tmp_path: Path):
    arch = {"type": "resnet", "channels": [4, 8], "blocks": [1, 1], "trunk": []}
    data = tiny_spec_dict(training={"epochs": 2}, baseline=False)
    data["dataset"] = {"file": str(digit_images(tmp_path)), "format": "npz"}
    data["student"] = arch
    data["teachers"] = [{"name": "all", "tasks": ["digit", "parity", "large"],
                         "source": {"train": {"arch": arch, "epochs": 2, "lr": 0.01}}}]
    train_and_check_export(data, tmp_path / "job", roles=["teacher", "student"], input_shape=(1, 8, 8))


@pytest.mark.slow  # 10,000 36x36 images: about 30 s on 2 shared CPU cores
def test_resnet_student_learns_from_a_resnet_teacher_on_multimnist(tmp_path: Path):
    tasks = [{"name": "left", "kind": "multiclass", "num_classes": 10},
             {"name": "right", "kind": "multiclass", "num_classes": 10}]
    arch = {"type": "resnet", "channels": [2, 4], "blocks": [1, 1], "trunk": []}
    data = tiny_spec_dict(
        dataset={"builtin": "multimnist-5k", "validation_fraction": 0.5}, tasks=tasks, baseline=False,
        teachers=[{"name": "both", "tasks": ["left", "right"],
                   "source": {"train": {"arch": arch, "epochs": 1, "lr": 0.01, "batch_size": 256}}}],
        training={"epochs": 1, "batch_size": 256, "lr": 0.01})
    data["student"] = arch
    train_and_check_export(data, tmp_path, roles=["teacher", "student"], input_shape=(1, 36, 36))
