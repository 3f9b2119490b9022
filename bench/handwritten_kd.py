"""Minimal hand-written PyTorch KD loop: the reference the engine is measured against.

Tensors in memory, index slicing, the teacher's logits computed once before the student phase.
Per task: multiclass alpha*KL(T)*T^2 + (1-alpha)*CE; binary alpha*BernoulliKL(T)*T^2 + (1-alpha)*BCE;
the task losses are summed with equal weights; AdamW; no per-epoch evaluation or checkpoint.
"""

import time

import torch
import torch.nn.functional as F
from torch import nn

Tensors = dict[str, torch.Tensor]


def task_loss(kind: str, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, temperature: float,
              alpha: float) -> torch.Tensor:
    """Hinton KD loss of one task for a batch."""
    if kind == "multiclass":
        soft = F.kl_div(F.log_softmax(z / temperature, -1), F.softmax(t / temperature, -1),
                        reduction="batchmean") * temperature**2
        return alpha * soft + (1 - alpha) * F.cross_entropy(z, y)
    z, t = z.squeeze(-1), t.squeeze(-1)
    q = torch.sigmoid(t / temperature)  # Bernoulli KL(q || p) = CE(q, p) - H(q), H(q) = CE(q, q)
    soft = (F.binary_cross_entropy_with_logits(z / temperature, q)
            - F.binary_cross_entropy_with_logits(t / temperature, q))
    return alpha * soft * temperature**2 + (1 - alpha) * F.binary_cross_entropy_with_logits(z, y)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor, batch: int = 4096) -> Tensors:
    """Run the teacher once over x; return {task: logits}."""
    teacher.eval()
    parts = [teacher(x[i:i + batch]) for i in range(0, len(x), batch)]
    return {task: torch.cat([p[task] for p in parts]) for task in parts[0]}


def train_student(student: nn.Module, x: torch.Tensor, y: Tensors, soft: Tensors,
                  kinds: dict[str, str], labelled: torch.Tensor | None, *, epochs: int,
                  batch_size: int, lr: float, temperature: float, alpha: float,
                  seed: int) -> float:
    """Train the student in place; return the wall seconds of the student phase."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    student.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            rows = order[start:start + batch_size]
            out = student(x[rows])
            loss = 0.0
            for task, kind in kinds.items():
                z, t, yt = out[task], soft[task][rows], y[task][rows]
                if labelled is None:
                    loss = loss + task_loss(kind, z, t, yt, temperature=temperature, alpha=alpha)
                else:  # unlabelled transfer rows: soft loss only
                    keep = labelled[rows]
                    soft_only = task_loss(kind, z, t, yt, temperature=temperature, alpha=1.0)
                    hard = (F.cross_entropy(z[keep], yt[keep]) if keep.any()
                            else z.sum() * 0)
                    loss = loss + alpha * soft_only + (1 - alpha) * hard
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str,
             batch: int = 4096) -> float:
    """Return the accuracy of a multiclass head, or of a binary one (one logit, > 0 is 1)."""
    model.eval()
    z = torch.cat([model(x[i:i + batch])[task] for i in range(0, len(x), batch)])  # (n, out)
    predicted = z.argmax(-1) if z.shape[-1] > 1 else (z[:, 0] > 0).to(y.dtype)
    return (predicted == y).float().mean().item()
