"""Losses against values computed by hand (math module, not torch)."""

import math

import pytest
import torch

from app.training.losses import (HARD_LOSSES, SOFT_LOSSES, binary_hard_loss, multiclass_hard_loss,
                                 multiclass_soft_loss, multilabel_hard_loss, regression_hard_loss,
                                 regression_soft_loss, sigmoid_soft_loss)


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
    got = sigmoid_soft_loss(student, teacher, temperature=temperature).item()
    assert got == pytest.approx(expected, rel=1e-6)


def bce(p: float, q: float) -> float:
    """Cross-entropy of a prediction q against a (soft) target p."""
    return -(p * math.log(q) + (1 - p) * math.log(1 - q))


def test_multilabel_hard_loss_is_bce_averaged_over_rows_and_labels():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 3.0]])  # (batch 2, labels 3)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    elements = [bce(1, sigmoid(0)), bce(0, sigmoid(2)), bce(0, sigmoid(-1)),
                bce(1, sigmoid(1)), bce(1, sigmoid(0)), bce(0, sigmoid(3))]
    assert multilabel_hard_loss(logits, target).item() == pytest.approx(sum(elements) / 6, rel=1e-6)


def test_multilabel_soft_loss_is_elementwise_tempered_bce_times_t_squared():
    temperature = 3.0
    student = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    teacher = torch.tensor([[3.0, 0.0], [-3.0, 6.0]])
    elements = [bce(sigmoid(t / temperature), sigmoid(s / temperature))
                for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True)
                for s, t in zip(s_row, t_row, strict=True)]
    expected = sum(elements) / 4 * temperature**2
    got = SOFT_LOSSES["multilabel"](student, teacher, temperature=temperature).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_soft_bce_is_smallest_where_the_student_matches_the_teacher():
    teacher = torch.tensor([[1.5, -0.5]])
    at_teacher = sigmoid_soft_loss(teacher, teacher, temperature=2.0)
    assert at_teacher < sigmoid_soft_loss(teacher + 0.3, teacher, temperature=2.0)
    assert at_teacher < sigmoid_soft_loss(teacher - 0.3, teacher, temperature=2.0)


def test_regression_losses_are_mse_and_ignore_the_temperature():
    prediction = torch.tensor([[0.5], [-1.0], [2.0]])  # (batch, 1), standardised units
    target = torch.tensor([1.0, -1.0, 0.0])
    assert regression_hard_loss(prediction, target).item() == pytest.approx((0.25 + 0 + 4) / 3)
    teacher = torch.tensor([[0.0], [0.0], [1.0]])
    expected = (0.25 + 1 + 1) / 3
    for temperature in (1.0, 4.0):
        got = regression_soft_loss(prediction, teacher, temperature=temperature).item()
        assert got == pytest.approx(expected, rel=1e-6)


def test_every_task_kind_has_a_hard_and_a_soft_loss_with_a_gradient():
    cases = {
        "multiclass": (torch.randn(4, 3), torch.tensor([0, 2, 1, 0])),
        "binary": (torch.randn(4, 1), torch.tensor([1.0, 0.0, 0.0, 1.0])),
        "multilabel": (torch.randn(4, 5), (torch.rand(4, 5) > 0.5).float()),
        "regression": (torch.randn(4, 1), torch.randn(4)),
    }
    assert set(cases) == set(HARD_LOSSES) == set(SOFT_LOSSES)
    for kind, (logits, target) in cases.items():
        logits.requires_grad_(True)
        hard = HARD_LOSSES[kind](logits, target)
        soft = SOFT_LOSSES[kind](logits, torch.randn_like(logits), temperature=2.0)
        assert hard.shape == soft.shape == ()
        (hard + soft).backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
