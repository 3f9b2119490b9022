"""Metrics and the teacher ensemble."""

from pathlib import Path

import pytest
import torch

from app.training.checkpoint import read_finished
from app.training.datasets.registry import load_dataset
import sklearn.metrics as skm

from app.training.evaluate import (PRIMARY_METRICS, all_task_metrics, binary_accuracy, binary_auc,
                                   binary_f1, compare_tasks, multiclass_accuracy,
                                   multiclass_macro_f1, multilabel_label_accuracy,
                                   multilabel_macro_auc, multilabel_micro_f1, predict,
                                   regression_mae, regression_r2, regression_rmse, task_metrics)
from app.training.spec import TaskSpec
from app.training.target_scaling import fit_target_scales, standardise_targets
from app.training.loop import train
from app.training.models import build_model
from tests.training.conftest import tiny_spec


def test_accuracies_are_exact_fractions():
    assert multiclass_accuracy(torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]]),
                               torch.tensor([1, 0, 0])) == pytest.approx(2 / 3, abs=0)
    assert binary_accuracy(torch.tensor([[0.5], [-0.5], [0.1]]), torch.tensor([1.0, 1.0, 1.0])) == 2 / 3


def test_teacher_value_of_a_shared_task_is_the_ensemble(tmp_path: Path):
    teachers = tiny_spec().model_dump(mode="json")["teachers"]
    teachers[1]["tasks"] = ["digit", "parity", "large"]  # both teachers now predict "digit"
    spec = tiny_spec(teachers=teachers)
    results = train(spec, tmp_path).results
    state = read_finished(tmp_path)
    data = load_dataset(spec.dataset, tasks=spec.tasks)
    per_teacher = []
    for teacher in spec.teachers:
        model = build_model(teacher.source.train.arch, input_shape=[64],
                            tasks=[spec.task(name) for name in teacher.tasks])
        model.load_state_dict(state[f"teacher:{teacher.name}"]["model"])
        per_teacher.append(predict(model, data.x_test))
    # Hinton's ensemble: the mean of the tempered probabilities (digit: both teachers, T = 4)
    mixture = torch.stack([torch.softmax(p["digit"] / 4.0, dim=-1) for p in per_teacher]).mean(0)
    combined = {**per_teacher[1], "digit": mixture.log()}
    expected = task_metrics(combined, data.y_test, spec.tasks)
    assert {task: entry["teacher"] for task, entry in results["tasks"].items()} == expected


# --- every metric of every task kind against scikit-learn ---------------------------------------

def random_case(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (logits, targets) of a task kind with some ties in the scores."""
    g = torch.Generator().manual_seed(seed)
    if kind == "multiclass":
        return torch.randn(60, 4, generator=g), torch.randint(0, 4, (60,), generator=g)
    if kind == "binary":
        return (torch.randint(-3, 4, (60, 1), generator=g).float() / 2,  # ties for AUC
                torch.randint(0, 2, (60,), generator=g).float())
    if kind == "multilabel":
        return torch.randn(60, 5, generator=g), (torch.rand(60, 5, generator=g) > 0.6).float()
    return torch.randn(60, 1, generator=g) * 3 + 10, torch.randn(60, generator=g) * 3 + 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed: int):
    logits, target = random_case("multiclass", seed)
    assert multiclass_accuracy(logits, target) == pytest.approx(
        skm.accuracy_score(target, logits.argmax(1)))
    assert multiclass_macro_f1(logits, target) == pytest.approx(
        skm.f1_score(target, logits.argmax(1), average="macro"))

    logits, target = random_case("binary", seed)
    predicted = (logits[:, 0] > 0).long()
    assert binary_accuracy(logits, target) == pytest.approx(skm.accuracy_score(target, predicted))
    assert binary_f1(logits, target) == pytest.approx(skm.f1_score(target, predicted))
    assert binary_auc(logits, target) == pytest.approx(skm.roc_auc_score(target, logits[:, 0]))

    logits, target = random_case("multilabel", seed)
    predicted = (logits > 0).long().numpy()
    assert multilabel_micro_f1(logits, target) == pytest.approx(
        skm.f1_score(target.numpy(), predicted, average="micro"))
    assert multilabel_label_accuracy(logits, target) == pytest.approx(
        1 - skm.hamming_loss(target.numpy(), predicted))
    assert multilabel_macro_auc(logits, target) == pytest.approx(
        skm.roc_auc_score(target.numpy(), logits.numpy(), average="macro"))


@pytest.mark.parametrize("seed", [0, 1])
def test_regression_metrics_match_sklearn(seed: int):
    prediction, target = random_case("regression", seed)
    assert regression_rmse(prediction, target) == pytest.approx(
        skm.mean_squared_error(target, prediction[:, 0]) ** 0.5)
    assert regression_mae(prediction, target) == pytest.approx(
        skm.mean_absolute_error(target, prediction[:, 0]))
    assert regression_r2(prediction, target) == pytest.approx(skm.r2_score(target, prediction[:, 0]))


def test_undefined_metrics_are_none_and_skipped_labels_do_not_count():
    one_class = torch.ones(5)
    assert binary_auc(torch.randn(5, 1), one_class) is None
    assert regression_r2(torch.randn(5, 1), one_class) is None
    target = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])  # label 1 has one class only
    logits = torch.tensor([[2.0, 0.0], [1.0, 5.0], [3.0, -1.0]])
    assert multilabel_macro_auc(logits, target) == pytest.approx(
        skm.roc_auc_score(target[:, 0], logits[:, 0]))
    assert multilabel_macro_auc(logits, torch.ones(3, 2)) is None
    assert binary_f1(torch.full((4, 1), -1.0), torch.zeros(4)) == 0.0  # no positives at all


def test_regression_metrics_read_in_original_units():
    tasks = [TaskSpec(name="mass", kind="regression")]
    y_train = {"mass": torch.tensor([3000.0, 4000.0, 5000.0])}
    scales = fit_target_scales(y_train, tasks)
    assert scales["mass"].mean == pytest.approx(4000.0)
    assert scales["mass"].std == pytest.approx((2 / 3 * 1e6) ** 0.5)
    standardised = standardise_targets(y_train, scales)["mass"]
    assert standardised.mean().item() == pytest.approx(0.0, abs=1e-6)
    # a model that predicts the standardised targets exactly has RMSE 0 in grams
    logits = {"mass": standardised[:, None]}
    metrics = all_task_metrics(logits, y_train, tasks, scales=scales)["mass"]
    assert metrics["rmse"] == pytest.approx(0.0, abs=1e-3) and metrics["r2"] == pytest.approx(1.0)
    off_by_one_std = {"mass": (standardised + 1)[:, None]}
    assert task_metrics(off_by_one_std, y_train, tasks, scales=scales)["mass"] == pytest.approx(
        scales["mass"].std, rel=1e-5)


def test_primary_metrics_and_directions():
    assert {kind: PRIMARY_METRICS[kind][:2] for kind in PRIMARY_METRICS} == {
        "multiclass": ("accuracy", True), "binary": ("accuracy", True),
        "multilabel": ("micro_f1", True), "regression": ("rmse", False)}
    tasks = [TaskSpec(name="mass", kind="regression")]
    compared = compare_tasks(tasks, teacher={"mass": {"rmse": 1.0, "mae": 0.5, "r2": 0.9}},
                             student={"mass": {"rmse": 2.0, "mae": 1.0, "r2": 0.8}}, baseline=None)
    assert compared["mass"] == {
        "metric": "rmse", "higher_is_better": False, "teacher": 1.0, "student": 2.0,
        "baseline": None, "all": {"teacher": {"rmse": 1.0, "mae": 0.5, "r2": 0.9},
                                  "student": {"rmse": 2.0, "mae": 1.0, "r2": 0.8}, "baseline": None}}
