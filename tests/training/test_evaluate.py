"""Metrics and the teacher ensemble."""

from pathlib import Path

import pytest
import torch

from app.training.datasets.registry import load_dataset
from app.training.evaluate import binary_accuracy, ensemble_logits, multiclass_accuracy, predict, task_metrics
from app.training.loop import train
from app.training.models import build_model
from tests.training.conftest import tiny_spec


def test_accuracies_are_exact_fractions():
    assert multiclass_accuracy(torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]]),
                               torch.tensor([1, 0, 0])) == pytest.approx(2 / 3, abs=0)
    assert binary_accuracy(torch.tensor([[0.5], [-0.5], [0.1]]), torch.tensor([1.0, 1.0, 1.0])) == 2 / 3


def test_ensemble_averages_the_teachers_that_share_a_task():
    first = {"digit": torch.tensor([[1.0, 3.0]]), "large": torch.tensor([[2.0]])}
    second = {"digit": torch.tensor([[3.0, 1.0]])}
    merged = ensemble_logits([first, second])
    assert torch.equal(merged["digit"], torch.tensor([[2.0, 2.0]]))
    assert torch.equal(merged["large"], torch.tensor([[2.0]]))


def test_teacher_value_of_a_shared_task_is_the_ensemble(tmp_path: Path):
    teachers = tiny_spec().model_dump(mode="json")["teachers"]
    teachers[1]["tasks"] = ["digit", "parity", "large"]  # both teachers now predict "digit"
    spec = tiny_spec(teachers=teachers)
    results = train(spec, tmp_path).results
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["finished"]
    data = load_dataset(spec.dataset, tasks=spec.tasks)
    per_teacher = []
    for teacher in spec.teachers:
        model = build_model(teacher.source.train.arch, input_shape=[64],
                            tasks=[spec.task(name) for name in teacher.tasks])
        model.load_state_dict(state[f"teacher:{teacher.name}"]["model"])
        per_teacher.append(predict(model, data.x_test))
    expected = task_metrics(ensemble_logits(per_teacher), data.y_test, spec.tasks)
    assert {task: entry["teacher"] for task, entry in results["tasks"].items()} == expected
