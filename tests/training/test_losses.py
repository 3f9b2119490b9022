"""Losses against values computed by hand (math module, not torch)."""

import math

import pytest
import torch

from app.training.losses import (binary_hard_loss, binary_soft_loss, multiclass_hard_loss,
                                 multiclass_soft_loss)
from app.training.spec import JobSpec
from app.training.strategies import plan_stages, stage_loss
from tests.training.conftest import tiny_spec_dict


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_multiclass_hard_loss_is_mean_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([0, 2])
    expected = (math.log(1 + 2 * math.exp(-2)) + math.log(3)) / 2
    assert multiclass_hard_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_multiclass_soft_loss_is_batchmean_kl_times_t_squared():
    temperature = 2.0
    student = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0], [1.0, 3.0]])  # row 2 agrees: KL 0
    p_teacher = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax([2, 0] / 2)
    kl_row1 = sum(p * math.log(p / 0.5) for p in p_teacher)  # student softmax is [0.5, 0.5]
    expected = kl_row1 / 2 * temperature**2  # batchmean over 2 rows, then T^2
    got = multiclass_soft_loss(student, teacher, temperature=temperature).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_binary_hard_loss_is_mean_bce_with_logits():
    logits = torch.tensor([[0.0], [2.0]])  # (batch, 1)
    target = torch.tensor([1.0, 0.0])
    expected = (math.log(2) + -math.log(1 - sigmoid(2))) / 2
    assert binary_hard_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_binary_soft_loss_is_bce_of_tempered_sigmoids_times_t_squared():
    temperature = 2.0
    student = torch.tensor([[2.0], [-1.0]])
    teacher = torch.tensor([[4.0], [0.0]])

    def bce(p: float, q: float) -> float:  # target p, prediction q
        return -(p * math.log(q) + (1 - p) * math.log(1 - q))

    rows = [bce(sigmoid(4 / temperature), sigmoid(2 / temperature)),
            bce(sigmoid(0 / temperature), sigmoid(-1 / temperature))]
    expected = sum(rows) / 2 * temperature**2
    got = binary_soft_loss(student, teacher, temperature=temperature).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_student_stage_mixes_soft_and_hard_with_alpha_and_task_weight():
    spec = JobSpec.model_validate(tiny_spec_dict(
        distillation={"alpha": 0.25, "per_task": {"large": {"alpha": 1.0, "temperature": 2.0}}},
        weighting={"method": "fixed", "weights": {"digit": 3.0}}))
    student = next(plan for plan in plan_stages(spec) if plan.role == "student")
    terms_fn, coefficients = stage_loss(spec, student)
    assert coefficients == {"digit.soft": 0.75, "digit.hard": 2.25, "parity.soft": 0.25,
                            "parity.hard": 0.75, "large.soft": 1.0, "large.hard": 0.0}
    zeros = {"digit": torch.zeros(2, 10), "parity": torch.zeros(2, 2)}
    logits = {**zeros, "large": torch.tensor([[2.0], [-1.0]])}  # task -> (batch, out)
    teacher = {**zeros, "large": torch.tensor([[4.0], [0.0]])}
    targets = {"digit": torch.tensor([1, 2]), "parity": torch.tensor([0, 1]),
               "large": torch.tensor([1.0, 0.0])}
    terms = terms_fn(logits=logits, targets=targets, teacher_logits=teacher)
    assert terms["digit.soft"].item() == pytest.approx(0.0, abs=1e-7)  # identical distributions
    assert terms["digit.hard"].item() == pytest.approx(math.log(10), rel=1e-6)
    assert terms["large.soft"].item() == pytest.approx(
        binary_soft_loss(logits["large"], teacher["large"], temperature=2.0).item())


def test_teacher_and_baseline_stages_use_hard_terms_only():
    spec = JobSpec.model_validate(tiny_spec_dict())
    names = [plan.name for plan in plan_stages(spec)]
    assert names == ["teacher:digit-teacher", "teacher:aux-teacher", "student", "baseline"]
    teacher, _, _, baseline = plan_stages(spec)
    assert stage_loss(spec, teacher)[1] == {"digit.hard": 1.0}
    assert stage_loss(spec, baseline)[1] == {"digit.hard": 1.0, "parity.hard": 1.0, "large.hard": 1.0}
