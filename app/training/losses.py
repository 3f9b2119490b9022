"""Hard and soft (knowledge-distillation) losses per task kind; each returns a scalar tensor.

Logits are (batch, out): out = num_classes for multiclass, 1 for binary. Targets are int64 class
ids (batch,) for multiclass and float 0/1 (batch,) for binary.
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


def multiclass_soft_loss(student: torch.Tensor, teacher: torch.Tensor, *,
                         temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) summed over classes, mean over the batch, times T^2."""
    log_p_student = F.log_softmax(student / temperature, dim=-1)  # (batch, classes)
    p_teacher = F.softmax(teacher / temperature, dim=-1)  # (batch, classes)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


def binary_soft_loss(student: torch.Tensor, teacher: torch.Tensor, *,
                     temperature: float) -> torch.Tensor:
    """BCE between sigmoid(student/T) and sigmoid(teacher/T), mean over the batch, times T^2."""
    soft_target = torch.sigmoid(teacher[:, 0] / temperature)  # (batch,)
    return F.binary_cross_entropy_with_logits(student[:, 0] / temperature, soft_target) * temperature**2


HARD_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "multiclass": multiclass_hard_loss,
    "binary": binary_hard_loss,
}
SOFT_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "multiclass": multiclass_soft_loss,
    "binary": binary_soft_loss,
}
