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
A term may be missing from `terms` (a hard term in a batch without labelled rows); `coefficients`
may name it or not. A task with no term in the batch is absent: it adds nothing to the objective
(no loss, no regulariser), takes no part in GradNorm's balance, and is left out of DWA's epoch
means. Learned parameters go into the stage's optimiser; `state_dict()` holds everything else a
resumed run needs (a weighting is a torch Module).
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from app.training.spec import JobSpec

Tensors = dict[str, torch.Tensor]
LEARNED_METHODS = ("uncertainty", "dwa", "gradnorm")
TASK_TERMS = ("hard", "soft")  # term suffixes that belong to a task's loss


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
        return sum(coefficient * terms[name] for name, coefficient in coefficients.items()
                   if name in terms), {}

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
        self.index = {task: position for position, task in enumerate(self.tasks)}
        # Per-task loss sums and present-step counts of the running epoch; empty at every
        # checkpoint (epoch boundaries), so not saved.
        self.register_buffer("epoch_sums", torch.zeros(len(self.tasks), dtype=torch.float64),
                             persistent=False)  # (n_tasks,)
        self.register_buffer("epoch_counts", torch.zeros(len(self.tasks), dtype=torch.int64),
                             persistent=False)  # (n_tasks,)
        self.epoch_steps = 0
        # Presence masks by pattern, on the terms' device: no host-to-device copy per step.
        self._masks: dict[tuple[Any, ...], torch.Tensor] = {}

    @abstractmethod
    def weight_tensor(self) -> torch.Tensor:
        """Return the current task weights, (n_tasks,)."""

    def weigh(self, task_losses: torch.Tensor, *, shared: torch.Tensor | None,
              present: torch.Tensor) -> tuple[torch.Tensor, Tensors]:
        """Return (weighted sum of the present task losses (n_tasks,), extra terms to add)."""
        return torch.where(present, self.weight_tensor() * task_losses, 0.0).sum(), {}

    def combine(self, terms: Tensors, coefficients: dict[str, float], *,
                shared: torch.Tensor | None = None) -> tuple[torch.Tensor, Tensors]:
        task_losses, other, present = self._group(terms, coefficients)  # (n_tasks,), (), (n_tasks,)
        with torch.no_grad():
            self.epoch_sums += torch.where(present, task_losses.detach().double(), 0.0)
            self.epoch_counts += present
            self.epoch_steps += 1
        weighted, extra = self.weigh(task_losses, shared=shared, present=present)
        return weighted + other + sum(extra.values()), extra

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weight_tensor().detach().tolist(), strict=True))

    def end_epoch(self) -> None:
        """Close the epoch: forget the loss sums."""
        self.epoch_sums.zero_()
        self.epoch_counts.zero_()
        self.epoch_steps = 0

    def _group(self, terms: Tensors,
               coefficients: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (per-task losses (n_tasks,), the weighted sum of the terms of no task, the
        (n_tasks,) bool mask of tasks with at least one term in `terms`)."""
        reference = next(iter(terms.values()), None)
        zero = (reference if reference is not None else self.weight_tensor().detach()).new_zeros(())
        per_task = [zero for _ in self.tasks]
        seen = [False for _ in self.tasks]
        other = zero
        for name, coefficient in coefficients.items():
            if name not in terms:  # absent this batch (a hard term without labelled rows)
                continue
            task, _, kind = name.rpartition(".")
            position = self.index.get(task) if kind in TASK_TERMS else None
            if position is None:
                other = other + coefficient * terms[name]
            else:
                per_task[position] = per_task[position] + coefficient * terms[name]
                seen[position] = True
        return torch.stack(per_task), other, self._mask(tuple(seen), zero.device)

    def _mask(self, seen: tuple[bool, ...], device: torch.device) -> torch.Tensor:
        key = (*seen, str(device))
        if key not in self._masks:
            self._masks[key] = torch.tensor(seen, dtype=torch.bool, device=device)
        return self._masks[key]


class UncertaintyWeighting(LearnedWeighting):
    """Kendall, Gal & Cipolla 2018: a learned s_i = log sigma_i^2 per task, from its likelihood.

    The objective adds, for each task present in the batch,
        regression (Gaussian likelihood, eq. 7):         1/2 exp(-s_i) L_i + 1/2 s_i
        multiclass, binary, multilabel (eq. 10):         exp(-s_i) L_i + 1/2 s_i
    i.e. 1/(2 sigma^2) L + log sigma and 1/sigma^2 L + log sigma; the tempered-sigmoid
    likelihood of binary and multilabel tasks takes the same approximation as the paper's
    softmax. Both settle where the weight on L_i is 1/(2 L_i). The logged weight of a task is
    its factor on L_i: 1/2 exp(-s_i) or exp(-s_i). An absent task adds neither term, so its s_i
    gets no gradient.
    """

    KINDS = {"regression": 0.5, "multiclass": 1.0, "binary": 1.0, "multilabel": 1.0}

    def __init__(self, tasks: Sequence[str], *, kinds: Sequence[str]) -> None:
        super().__init__(tasks)
        if len(kinds) != len(self.tasks) or any(kind not in self.KINDS for kind in kinds):
            raise ValueError(f"need one kind of {sorted(self.KINDS)} per task, got {list(kinds)}")
        self.kinds = list(kinds)
        self.log_variance = nn.Parameter(torch.zeros(len(self.tasks)))  # s, (n_tasks,)
        # The likelihood's factor on exp(-s) L, (n_tasks,); fixed by the kinds, so not saved.
        self.register_buffer("factors", torch.tensor([self.KINDS[kind] for kind in self.kinds]),
                             persistent=False)

    def weigh(self, task_losses: torch.Tensor, *, shared: torch.Tensor | None,
              present: torch.Tensor) -> tuple[torch.Tensor, Tensors]:
        weighted = torch.where(present, self.weight_tensor() * task_losses, 0.0).sum()
        regulariser = torch.where(present, 0.5 * self.log_variance, 0.0).sum()
        return weighted, {"weighting.log_variance": regulariser}

    def weight_tensor(self) -> torch.Tensor:
        return self.factors * torch.exp(-self.log_variance)  # (n_tasks,)


class DynamicWeightAverage(LearnedWeighting):
    """Liu et al. 2019 (DWA): w_i = K softmax_i(r_i / T), r_i = L_i(t-1) / L_i(t-2) epoch means.

    The first two epochs use weight 1 (no ratio exists yet). A task's epoch mean is over the
    steps where it was present; a task absent for a whole epoch repeats its previous mean, and a
    task with no earlier mean (0) gets the ratio 1.
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
            means = self.epoch_sums / self.epoch_counts.clamp_min(1)  # (n_tasks,)
            self.record_epoch_losses(torch.where(self.epoch_counts > 0, means, self.last_losses[1]))
        super().end_epoch()

    def record_epoch_losses(self, losses: torch.Tensor) -> None:
        """Push one epoch's mean task losses (n_tasks,) and derive the next epoch's weights."""
        self.last_losses.copy_(torch.stack([self.last_losses[1], losses.double()]))
        self.epochs_seen += 1
        if self.epochs_seen >= 2:
            earlier, latest = self.last_losses  # (n_tasks,) each
            ratio = torch.where(earlier > 0, latest / earlier.clamp_min(1e-12), 1.0)  # (n_tasks,)
            self.weights.copy_(len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0))


class GradNormWeighting(LearnedWeighting):
    """Chen et al. 2018 (GradNorm): learned weights w that balance per-task gradient norms.

    With G_i = ||d(w_i L_i)/dW|| at the last shared layer W and r_i = (L_i / L_i(0)) over its mean,
    the weights follow the gradient of sum_i |G_i - mean(G) r_i^alpha| (target held constant);
    the network follows sum_i w_i L_i with w held constant; after each step w is renormalised
    to sum to the number of tasks. L_i(0) is task i's loss in the first batch where it is
    present; the balance, its mean and the mean ratio run over the tasks present in the batch.
    """

    def __init__(self, tasks: Sequence[str], *, alpha: float) -> None:
        super().__init__(tasks)
        self.alpha = alpha
        self.weights = nn.Parameter(torch.ones(len(self.tasks)))  # (n_tasks,)
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))  # L_i(0), (n_tasks,)
        self.register_buffer("initial_set", torch.zeros(len(self.tasks), dtype=torch.bool))

    def weight_tensor(self) -> torch.Tensor:
        return self.weights

    def weigh(self, task_losses: torch.Tensor, *, shared: torch.Tensor | None,
              present: torch.Tensor) -> tuple[torch.Tensor, Tensors]:
        if shared is None:
            raise ValueError("GradNorm needs the weight of the last shared layer")
        losses = task_losses.detach()  # (n_tasks,)
        with torch.no_grad():  # a task's L(0) comes from its first batch with a term
            self.initial_losses.copy_(torch.where(present & ~self.initial_set, losses,
                                                  self.initial_losses))
            self.initial_set |= present
        # Every present task now has its L(0): the participants are exactly the present tasks.
        count = present.sum().clamp_min(1)
        norms = torch.stack([self._grad_norm(loss, shared) for loss in task_losses])  # (n_tasks,)
        grad_norms = self.weights * norms  # G_i, differentiable in w only
        mean_norm = torch.where(present, grad_norms, 0.0).sum().detach() / count
        ratios = torch.where(present, losses / self.initial_losses.clamp_min(1e-12), 1.0)
        mean_ratio = (torch.where(present, ratios, 0.0).sum() / count).clamp_min(1e-12)
        target = mean_norm * (ratios / mean_ratio) ** self.alpha  # (n_tasks,)
        balance = torch.where(present, (grad_norms - target).abs(), 0.0).sum()
        weighted = torch.where(present, self.weights.detach() * task_losses, 0.0).sum()
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

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints from before per-task L(0) hold one "started" flag for every task.
        started = state_dict.pop(prefix + "started", None)
        if started is not None and prefix + "initial_set" not in state_dict:
            state_dict[prefix + "initial_set"] = started.expand(len(self.tasks)).clone()
        super()._load_from_state_dict(state_dict, prefix, *args)


def build_weighting(spec: JobSpec, tasks: Sequence[str], *, learned: bool = True) -> TaskWeighting:
    """Return the weighting of a stage; `learned=False` (teachers) keeps the static sum."""
    method = spec.weighting.method
    if not learned or method not in LEARNED_METHODS:
        return TaskWeighting(tasks)
    if method == "uncertainty":
        return UncertaintyWeighting(tasks, kinds=[spec.task(name).kind for name in tasks])
    if method == "dwa":
        return DynamicWeightAverage(tasks, temperature=spec.weighting.temperature or 2.0)
    return GradNormWeighting(tasks, alpha=spec.weighting.alpha if spec.weighting.alpha is not None else 1.5)
