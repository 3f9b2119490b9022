"""Every task kind end to end through train() on small built-in datasets (penguins, yeast)."""

import math
from pathlib import Path
from typing import Any

import pytest

from app.training.datasets.registry import load_dataset
from app.training.evaluate import all_task_metrics, predict
from app.training.export import load_student
from app.training.loop import train
from app.training.spec import JobSpec


def small_spec(dataset: str, tasks: list[dict[str, Any]], **extra: Any) -> JobSpec:
    """Return a two-epoch job on a built-in dataset with one MLP teacher for all tasks."""
    teacher = {"name": "teacher", "tasks": [task["name"] for task in tasks],
               "source": {"train": {"arch": {"type": "mlp", "hidden": [32]}, "epochs": 8,
                                    "lr": 0.01, "batch_size": 64}}}
    return JobSpec.model_validate({
        "name": f"{dataset}-kinds", "dataset": {"builtin": dataset}, "tasks": tasks,
        "teachers": [teacher], "student": {"type": "mlp", "trunk": [16]},
        "training": {"epochs": 4, "batch_size": 64, "lr": 0.01, "seed": 0, "device": "cpu"},
        "export": ["safetensors"], **extra})


@pytest.fixture(scope="module")
def penguins_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[JobSpec, dict, Path]:
    spec = small_spec("penguins", [
        {"name": "species", "kind": "multiclass", "num_classes": 3},
        {"name": "sex", "kind": "binary"},
        {"name": "body_mass", "kind": "regression"}])
    workdir = tmp_path_factory.mktemp("penguins")
    return spec, train(spec, workdir).results, workdir


def test_classification_kinds_report_their_primary_metric_and_all_metrics(penguins_run):
    _, results, _ = penguins_run
    species, sex = results["tasks"]["species"], results["tasks"]["sex"]
    assert (species["metric"], species["higher_is_better"]) == ("accuracy", True)
    assert set(species["all"]["student"]) == {"accuracy", "macro_f1"}
    assert (sex["metric"], sex["higher_is_better"]) == ("accuracy", True)
    assert set(sex["all"]["teacher"]) == {"accuracy", "f1", "auc"}
    assert species["teacher"] > 0.7  # bill and flipper measurements separate the species
    for entry in (species, sex):
        for model in ("teacher", "student", "baseline"):
            assert entry[model] == entry["all"][model][entry["metric"]]
            assert all(0 <= value <= 1 for value in entry["all"][model].values())


def test_regression_is_trained_standardised_and_reported_in_grams(penguins_run):
    spec, results, workdir = penguins_run
    mass = results["tasks"]["body_mass"]
    assert (mass["metric"], mass["higher_is_better"]) == ("rmse", False)
    assert set(mass["all"]["student"]) == {"rmse", "mae", "r2"}
    data = load_dataset(spec.dataset, tasks=spec.tasks)
    spread = data.y_test["body_mass"].std().item()  # ~800 g
    assert spread > 300
    # a learned predictor in grams: better than predicting the mean, and close to its R^2
    assert 50 < mass["teacher"] < spread
    assert mass["all"]["teacher"]["r2"] > 0.3
    assert mass["all"]["teacher"]["mae"] <= mass["teacher"]
    # the head trains on standardised targets; the exported student answers in grams
    student = load_student(workdir / "artifacts")
    prediction = predict(student, data.x_test)["body_mass"][:, 0].double()
    rmse = (prediction - data.y_test["body_mass"].double()).square().mean().sqrt().item()
    assert rmse == pytest.approx(mass["student"], rel=1e-4)
    assert math.isfinite(mass["baseline"])


def test_multilabel_end_to_end(tmp_path: Path):
    spec = small_spec("yeast", [{"name": "labels", "kind": "multilabel", "num_classes": 14}],
                      distillation={"temperature": 2.0, "alpha": 0.7})
    results = train(spec, tmp_path).results
    labels = results["tasks"]["labels"]
    assert (labels["metric"], labels["higher_is_better"]) == ("micro_f1", True)
    assert set(labels["all"]["student"]) == {"micro_f1", "label_accuracy", "macro_auc"}
    # yeast's labels are learnable: well above chance for a ranking, a fair micro-F1
    assert labels["all"]["teacher"]["macro_auc"] > 0.6
    assert labels["teacher"] > 0.45 and labels["student"] > 0.3
    data = load_dataset(spec.dataset, tasks=spec.tasks)
    student = load_student(tmp_path / "artifacts")
    assert tuple(student(data.x_test[:2])["labels"].shape) == (2, 14)
    recomputed = all_task_metrics(predict(student, data.x_test), data.y_test, spec.tasks)
    assert recomputed["labels"] == pytest.approx(labels["all"]["student"])


def test_soft_targets_of_each_kind_reach_the_student(tmp_path: Path):
    """With alpha 1 (soft only) the student learns every kind from the teacher alone."""
    spec = small_spec("penguins", [
        {"name": "species", "kind": "multiclass", "num_classes": 3},
        {"name": "sex", "kind": "binary"},
        {"name": "body_mass", "kind": "regression"}],
        distillation={"alpha": 1.0, "temperature": 2.0}, baseline=False)
    results = train(spec, tmp_path).results["tasks"]
    assert results["species"]["student"] > 0.6
    assert results["sex"]["student"] > 0.6
    assert results["body_mass"]["student"] < 600  # grams; the test split's spread is ~800
