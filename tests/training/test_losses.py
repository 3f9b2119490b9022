"""Losses against values computed by hand (math module, not torch); soft terms are divergences."""

import math

import pytest
import torch
import torch.nn.functional as F

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


def bce(p: float, q: float) -> float:
    """Cross-entropy of a prediction q against a (soft) target p."""
    return -(p * math.log(q) + (1 - p) * math.log(1 - q))


def test_multilabel_hard_loss_is_bce_averaged_over_rows_and_labels():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 3.0]])  # (batch 2, labels 3)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    elements = [bce(1, sigmoid(0)), bce(0, sigmoid(2)), bce(0, sigmoid(-1)),
                bce(1, sigmoid(1)), bce(1, sigmoid(0)), bce(0, sigmoid(3))]
    assert multilabel_hard_loss(logits, target).item() == pytest.approx(sum(elements) / 6, rel=1e-6)


def log_sigmoid(z: float) -> float:
    """log(sigmoid(z)) without overflow for any z."""
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def bernoulli_kl(teacher: float, student: float) -> float:
    """KL(Bernoulli(q) || Bernoulli(p)) = q log(q/p) + (1-q) log((1-q)/(1-p)), with 0 log 0 = 0,
    q = sigmoid(teacher), p = sigmoid(student), 1 - q = sigmoid(-teacher)."""
    total = 0.0
    for t, s in ((teacher, student), (-teacher, -student)):  # the q and the 1 - q term
        q = math.exp(log_sigmoid(t))
        total += 0.0 if q == 0 else q * (log_sigmoid(t) - log_sigmoid(s))
    return total


def hand_sigmoid_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """Mean over every element (rows x labels) of the tempered Bernoulli KL, times T^2."""
    elements = [bernoulli_kl(t / temperature, s / temperature)
                for s, t in zip(student.flatten().tolist(), teacher.flatten().tolist(), strict=True)]
    return sum(elements) / len(elements) * temperature**2


@pytest.mark.parametrize(("kind", "labels"), [("binary", 1), ("multilabel", 3)])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_sigmoid_soft_loss_is_the_bernoulli_kl_times_t_squared(kind: str, labels: int,
                                                               temperature: float):
    torch.manual_seed(0)
    student, teacher = 3 * torch.randn(4, labels), 3 * torch.randn(4, labels)
    got = SOFT_LOSSES[kind](student, teacher, temperature=temperature).item()
    assert got == pytest.approx(hand_sigmoid_kd(student, teacher, temperature), rel=1e-5)


def test_sigmoid_soft_loss_with_saturated_logits_is_exact_and_finite():
    # sigmoid(+-200) is exactly 1 or 0 in float32: the teacher's q log q terms must be 0, not NaN.
    for logit in (50.0, 200.0):
        student = torch.tensor([[logit, -logit], [-logit, logit], [0.0, 1.0]], requires_grad=True)
        teacher = torch.tensor([[logit, -logit], [logit, -logit], [-logit, logit]])
        for temperature in (1.0, 2.0):
            loss = sigmoid_soft_loss(student, teacher, temperature=temperature)
            assert loss.item() == pytest.approx(hand_sigmoid_kd(student.detach(), teacher,
                                                                temperature), rel=1e-5)
            (grad,) = torch.autograd.grad(loss, student)
            assert torch.isfinite(grad).all()
        at_teacher = sigmoid_soft_loss(teacher, teacher, temperature=1.0)
        assert at_teacher.item() == 0.0


def test_sigmoid_soft_loss_is_zero_at_the_teacher_and_positive_elsewhere():
    torch.manual_seed(1)
    for temperature in (1.0, 3.0):
        teacher = 4 * torch.randn(5, 3)
        at_teacher = sigmoid_soft_loss(teacher.clone(), teacher, temperature=temperature).item()
        assert abs(at_teacher) < 1e-6
        for _ in range(20):
            student = teacher + torch.randn(5, 3)
            assert sigmoid_soft_loss(student, teacher, temperature=temperature).item() > 0


def test_sigmoid_soft_loss_has_the_gradient_of_the_tempered_bce():
    # KL = cross-entropy - the teacher's entropy, a constant: the student's gradient is unchanged.
    torch.manual_seed(2)
    teacher = 3 * torch.randn(6, 4)
    for temperature in (1.0, 2.0, 5.0):
        student = (3 * torch.randn(6, 4)).requires_grad_(True)
        (kl_grad,) = torch.autograd.grad(
            sigmoid_soft_loss(student, teacher, temperature=temperature), student)
        bce_loss = F.binary_cross_entropy_with_logits(
            student / temperature, torch.sigmoid(teacher / temperature)) * temperature**2
        (bce_grad,) = torch.autograd.grad(bce_loss, student)
        torch.testing.assert_close(kl_grad, bce_grad, rtol=1e-5, atol=1e-7)


def hand_multiclass_kd(student: list[float], teacher: list[float], temperature: float) -> float:
    """KL(softmax(t/T) || softmax(s/T)) over one row's classes, log-softmax by log-sum-exp."""
    def log_softmax(row: list[float]) -> list[float]:
        top = max(row)
        norm = top + math.log(sum(math.exp(z - top) for z in row))
        return [z - norm for z in row]

    log_q = log_softmax([t / temperature for t in teacher])
    log_p = log_softmax([s / temperature for s in student])
    return sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p, strict=True))


@pytest.mark.parametrize("scale", [3.0, 60.0])  # 60: near one-hot teachers, with exact zeros
def test_multiclass_soft_loss_matches_the_hand_kl_and_is_zero_at_the_teacher(scale: float):
    torch.manual_seed(3)
    student, teacher = scale * torch.randn(4, 5), scale * torch.randn(4, 5)
    for temperature in (1.0, 2.0):
        rows = [hand_multiclass_kd(s, t, temperature)
                for s, t in zip(student.tolist(), teacher.tolist(), strict=True)]
        got = multiclass_soft_loss(student, teacher, temperature=temperature).item()
        assert got == pytest.approx(sum(rows) / 4 * temperature**2, rel=1e-5)
        assert abs(multiclass_soft_loss(teacher, teacher, temperature=temperature).item()) < 1e-6


def test_regression_losses_are_mse_and_ignore_the_temperature():
    prediction = torch.tensor([[0.5], [-1.0], [2.0]])  # (batch, 1), standardised units
    target = torch.tensor([1.0, -1.0, 0.0])
    assert regression_hard_loss(prediction, target).item() == pytest.approx((0.25 + 0 + 4) / 3)
    teacher = torch.tensor([[0.0], [0.0], [1.0]])
    expected = (0.25 + 1 + 1) / 3
    for temperature in (1.0, 4.0):
        got = regression_soft_loss(prediction, teacher, temperature=temperature).item()
        assert got == pytest.approx(expected, rel=1e-6)
        assert regression_soft_loss(teacher, teacher, temperature=temperature).item() == 0.0


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
