"""Learning-rate schedules per optimiser step (catalog.SCHEDULES), the same for every stage kind.

    constant   no scheduler: the rate stays at lr
    cosine     lr * step / warmup during warm-up, then lr * (1 + cos(pi * progress)) / 2 down to
               0 at the stage's last step (Loshchilov & Hutter 2017, without restarts)
    onecycle   torch's OneCycleLR peaking at lr (Smith & Topin 2019), over the stage's steps
"""

import math
from typing import Any

import torch


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, *, lr: float, total_steps: int,
                    warmup_steps: int = 0) -> Any:
    """Return the stage's scheduler (stepped after every optimiser step), or None for constant."""
    if name == "constant":
        return None
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[lr] * len(optimizer.param_groups), total_steps=max(total_steps, 2))
    if name != "cosine":
        raise ValueError(f"unknown schedule {name!r}")
    warmup = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
