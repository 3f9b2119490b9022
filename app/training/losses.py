"""Hard and soft (knowledge-distillation) losses per task kind; each returns a scalar tensor.

Shapes per kind (logits from the task's head, targets from the dataset):
    multiclass  logits (batch, num_classes), target int64 class ids (batch,)
    binary      logits (batch, 1),           target float 0/1 (batch,)
    multilabel  logits (batch, num_labels),  target float 0/1 (batch, num_labels)
    regression  logits (batch, 1),           target float (batch,), standardised with the
                train split's mean and std (see target_scaling.py), as are teacher predictions
Binary and multilabel losses average over every element (rows x labels), like the hard BCE.

Soft (KD) terms are divergences, not cross-entropies, so each is 0 where the student matches
the teacher (Hinton et al. 2015, scaled by T^2 to keep gradient sizes independent of T):
    multiclass  KL(softmax(t/T) || softmax(s/T)) summed over classes, mean over rows, x T^2
    binary,     Bernoulli KL(sigmoid(t/T) || sigmoid(s/T)) per element, mean over rows x labels,
    multilabel  x T^2; its gradient is that of BCE(s/T, sigmoid(t/T)) x T^2 (they differ by the
                teacher's entropy, a constant)
    regression  MSE to the teacher's prediction (no temperature)
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F


def multiclass_hard_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class ids, mean over the batch."""
    return F.cross_entropy(logits, target)


def binary_hard_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits against 0/1 targets, mean over the batch."""
    return F.binary_cross_entropy_with_logits(logits[:, 0], target)


def multilabel_hard_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits per label, mean over rows and labels."""
    return F.binary_cross_entropy_with_logits(logits, target)


def regression_hard_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error against standardised targets."""
    return F.mse_loss(prediction[:, 0], target)


def multiclass_soft_loss(student: torch.Tensor, teacher: torch.Tensor, *,
                         temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) summed over classes, mean over the batch, times T^2."""
    log_p_student = F.log_softmax(student / temperature, dim=-1)  # (batch, classes)
    p_teacher = F.softmax(teacher / temperature, dim=-1)  # (batch, classes)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


def sigmoid_soft_loss(student: torch.Tensor, teacher: torch.Tensor, *,
                      temperature: float) -> torch.Tensor:
    """Bernoulli KL(sigmoid(teacher/T) || sigmoid(student/T)), mean over elements, times T^2."""
    t, s = teacher / temperature, student / temperature  # (batch, 1 or labels)
    q = torch.sigmoid(t)  # the teacher's probability of each label
    # KL(q || p) = CE(q, p) - H(q), and H(q) = CE(q, q): two fused, stable BCE-with-logits calls
    # (a saturated q of exactly 0 or 1 gives finite terms, never 0 * -inf), one of them without
    # a gradient. The same value as summing q log(q/p) + (1-q) log((1-q)/(1-p)) term by term, in
    # 2 kernels instead of 9 (this runs every step for every binary and multilabel task).
    with torch.no_grad():
        entropy = F.binary_cross_entropy_with_logits(t, q)
    return (F.binary_cross_entropy_with_logits(s, q) - entropy) * temperature**2


def regression_soft_loss(student: torch.Tensor, teacher: torch.Tensor, *,
                         temperature: float) -> torch.Tensor:
    """MSE to the teacher's (standardised) prediction; a regression output has no temperature."""
    del temperature  # accepted for the common signature; scaling a prediction by T means nothing
    return F.mse_loss(student, teacher)


HARD_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "multiclass": multiclass_hard_loss,
    "binary": binary_hard_loss,
    "multilabel": multilabel_hard_loss,
    "regression": regression_hard_loss,
}
SOFT_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "multiclass": multiclass_soft_loss,
    "binary": sigmoid_soft_loss,
    "multilabel": sigmoid_soft_loss,
    "regression": regression_soft_loss,
}
