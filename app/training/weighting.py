"""Task weighting: how the per-task losses of a stage become one objective.

`task_weights(spec, tasks)` gives the static weights (equal, fixed) that the strategies fold into
their term coefficients; the learned methods give 1 there and act through a `TaskWeighting`,
built per stage by `build_weighting`, which the loop calls every step:

    objective, extra = weighting.combine(terms, coefficients, shared=last_shared_weight)
    ...backward, optimizer step...
    weighting.after_step()                      # once per step
    weights = weighting.current_weights()       # {task: weight}, logged as "weight.<task>"
    weighting.end_epoch()                       # once per epoch

A task's loss is the coefficient-weighted sum of its terms ("<task>.hard", "<task>.soft"); other
terms (e.g. "feature.<teacher>") are added to the objective unweighted by the task weighting.
Learned parameters go into the stage's optimiser; `state_dict()` holds everything else a resumed
run needs (a weighting is a torch Module).
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from app.training.spec import JobSpec

Tensors = dict[str, torch.Tensor]
LEARNED_METHODS = ("uncertainty", "dwa", "gradnorm")


def task_weights(spec: JobSpec, tasks: Sequence[str]) -> dict[str, float]:
    """Return the static loss weight of each task (1 under a learned method)."""
    if spec.weighting.method == "fixed":
        weights = spec.weighting.weights or {}
        return {task: weights.get(task, 1.0) for task in tasks}
    return {task: 1.0 for task in tasks}


class TaskWeighting(nn.Module):
    """Static weighting (equal, fixed): the objective is sum(coefficient * term)."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)

    def combine(self, terms: Tensors, coefficients: dict[str, float], *,
                shared: torch.Tensor | None = None) -> tuple[torch.Tensor, Tensors]:
        """Return (objective to backpropagate, the weighting's own terms included in it)."""
        return sum(coefficient * terms[name] for name, coefficient in coefficients.items()), {}

    def current_weights(self) -> dict[str, float]:
        """Return the current learned weight of each task (none: static weights are in the spec)."""
        return {}

    def after_step(self) -> None:
        """Adjust the weights after an optimiser step."""

    def end_epoch(self) -> None:
        """Close the epoch."""


class LearnedWeighting(TaskWeighting, ABC):
    """A weighting whose task weights change in training; the terms are grouped per task."""

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        # Per-task loss sums of the running epoch; empty at every checkpoint (epoch boundaries).
        self.register_buffer("epoch_sums", torch.zeros(len(self.tasks), dtype=torch.float64),
                             persistent=False)
        self.epoch_steps = 0

    @abstractmethod
    def weight_tensor(self) -> torch.Tensor:
        """Return the current task weights, (n_tasks,)."""

    def weigh(self, task_losses: torch.Tensor, *,
              shared: torch.Tensor | None) -> tuple[torch.Tensor, Tensors]:
        """Return (weighted sum of the task losses (n_tasks,), extra terms to add)."""
        return (self.weight_tensor() * task_losses).sum(), {}

    def combine(self, terms: Tensors, coefficients: dict[str, float], *,
                shared: torch.Tensor | None = None) -> tuple[torch.Tensor, Tensors]:
        task_losses, other = self._group(terms, coefficients)  # (n_tasks,), scalar
        with torch.no_grad():
            self.epoch_sums += task_losses.detach().double()
            self.epoch_steps += 1
        weighted, extra = self.weigh(task_losses, shared=shared)
        return weighted + other + sum(extra.values()), extra

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weight_tensor().detach().tolist(), strict=True))

    def end_epoch(self) -> None:
        """Close the epoch: forget the loss sums."""
        self.epoch_sums.zero_()
        self.epoch_steps = 0

    def _group(self, terms: Tensors, coefficients: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (per-task losses (n_tasks,), the weighted sum of the terms of no task)."""
        zero = next(iter(terms.values())).new_zeros(())
        per_task = [zero for _ in self.tasks]
        other = zero
        index = {task: position for position, task in enumerate(self.tasks)}
        for name, coefficient in coefficients.items():
            task, _, kind = name.rpartition(".")
            if task in index and kind in ("hard", "soft"):
                per_task[index[task]] = per_task[index[task]] + coefficient * terms[name]
            else:
                other = other + coefficient * terms[name]
        return torch.stack(per_task), other


class UncertaintyWeighting(LearnedWeighting):
    """Kendall et al. 2018: objective = sum_i exp(-s_i) L_i + s_i, s_i = log sigma_i^2 learned.

    Kendall's derivation gives 1/2 exp(-s) L + 1/2 s for a Gaussian (regression) task and
    exp(-s) L + 1/2 s for a softmax (classification) task; both settle at the weight
    exp(-s) = 1/(2L). The unified form used here (as in the paper's released code) settles at
    1/L for every kind: the same balance up to one global factor of 2.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_variance = nn.Parameter(torch.zeros(len(self.tasks)))  # (n_tasks,)

    def weigh(self, task_losses: torch.Tensor, *,
              shared: torch.Tensor | None) -> tuple[torch.Tensor, Tensors]:
        weighted = (torch.exp(-self.log_variance) * task_losses).sum()
        return weighted, {"weighting.log_variance": self.log_variance.sum()}

    def weight_tensor(self) -> torch.Tensor:
        return torch.exp(-self.log_variance)


class DynamicWeightAverage(LearnedWeighting):
    """Liu et al. 2019 (DWA): w_i = K softmax_i(r_i / T), r_i = L_i(t-1) / L_i(t-2) epoch means.

    The first two epochs use weight 1 (no ratio exists yet).
    """

    def __init__(self, tasks: Sequence[str], *, temperature: float) -> None:
        super().__init__(tasks)
        self.temperature = temperature
        self.register_buffer("weights", torch.ones(len(self.tasks)))  # (n_tasks,)
        self.register_buffer("last_losses", torch.zeros(2, len(self.tasks), dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.int64))

    def weight_tensor(self) -> torch.Tensor:
        return self.weights

    def end_epoch(self) -> None:
        if self.epoch_steps:
            self.record_epoch_losses(self.epoch_sums / self.epoch_steps)
        super().end_epoch()

    def record_epoch_losses(self, losses: torch.Tensor) -> None:
        """Push one epoch's mean task losses (n_tasks,) and derive the next epoch's weights."""
        self.last_losses.copy_(torch.stack([self.last_losses[1], losses.double()]))
        self.epochs_seen += 1
        if self.epochs_seen >= 2:
            ratio = self.last_losses[1] / self.last_losses[0].clamp_min(1e-12)  # (n_tasks,)
            self.weights.copy_(len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0))


class GradNormWeighting(LearnedWeighting):
    """Chen et al. 2018 (GradNorm): learned weights w that balance per-task gradient norms.

    With G_i = ||d(w_i L_i)/dW|| at the last shared layer W and r_i = (L_i / L_i(0)) over its mean,
    the weights follow the gradient of sum_i |G_i - mean(G) r_i^alpha| (target held constant);
    the network follows sum_i w_i L_i with w held constant; after each step w is renormalised
    to sum to the number of tasks.
    """

    def __init__(self, tasks: Sequence[str], *, alpha: float) -> None:
        super().__init__(tasks)
        self.alpha = alpha
        self.weights = nn.Parameter(torch.ones(len(self.tasks)))  # (n_tasks,)
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))  # L_i(0)
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def weight_tensor(self) -> torch.Tensor:
        return self.weights

    def weigh(self, task_losses: torch.Tensor, *,
              shared: torch.Tensor | None) -> tuple[torch.Tensor, Tensors]:
        if shared is None:
            raise ValueError("GradNorm needs the weight of the last shared layer")
        if not self.started:
            self.initial_losses.copy_(task_losses.detach())
            self.started.fill_(True)
        norms = torch.stack([self._grad_norm(loss, shared) for loss in task_losses])  # (n_tasks,)
        grad_norms = self.weights * norms  # G_i, differentiable in w only
        ratios = task_losses.detach() / self.initial_losses.clamp_min(1e-12)
        target = grad_norms.mean().detach() * (ratios / ratios.mean()) ** self.alpha
        balance = (grad_norms - target).abs().sum()
        weighted = (self.weights.detach() * task_losses).sum()
        return weighted, {"weighting.gradnorm": balance}

    @staticmethod
    def _grad_norm(loss: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        if not loss.requires_grad:
            return torch.zeros((), device=shared.device)
        (grad,) = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        return torch.zeros((), device=shared.device) if grad is None else grad.norm().detach()

    def after_step(self) -> None:
        with torch.no_grad():
            self.weights.clamp_(min=1e-3)
            self.weights.mul_(len(self.tasks) / self.weights.sum())


def build_weighting(spec: JobSpec, tasks: Sequence[str], *, learned: bool = True) -> TaskWeighting:
    """Return the weighting of a stage; `learned=False` (teachers) keeps the static sum."""
    method = spec.weighting.method
    if not learned or method not in LEARNED_METHODS:
        return TaskWeighting(tasks)
    if method == "uncertainty":
        return UncertaintyWeighting(tasks)
    if method == "dwa":
        return DynamicWeightAverage(tasks, temperature=spec.weighting.temperature or 2.0)
    return GradNormWeighting(tasks, alpha=spec.weighting.alpha if spec.weighting.alpha is not None else 1.5)
