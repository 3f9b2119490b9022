"""Gated mixtures of experts for multi-task learning: MMoE (Ma et al. 2018) and PLE (Tang et al. 2020).

Inputs of any shape are flattened. Every expert is an MLP (Linear+ReLU per `expert` width); a
gate is a Linear whose softmax weighs the experts it sees. Task k's tower input is its gated
mixture, (batch, expert[-1]); the towers are the task heads, built by models.py.
Taps: "task:<name>" is task <name>'s tower input and "trunk" their concatenation in task order,
(batch, n_tasks * expert[-1]). Dropout acts on the tower inputs after the taps, as in the zoo's
other models, so a tap is the same point in training and in eval mode.
"""

from collections.abc import Sequence

import torch
from torch import nn


def expert_mlp(in_features: int, widths: Sequence[int]) -> nn.Sequential:
    """Return Linear+ReLU per width: (batch, in_features) -> (batch, widths[-1])."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return nn.Sequential(*layers)


def mix(gate_logits: torch.Tensor, experts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return sum_e softmax(gate_logits)_e * experts[e]: (batch, n), n x (batch, width) -> (batch, width)."""
    weights = torch.softmax(gate_logits, dim=-1).unsqueeze(-1)  # (batch, n, 1)
    return (weights * torch.stack(list(experts), dim=1)).sum(dim=1)


class GatedExperts(nn.Module):
    """What MMoE and PLE share: towers under `heads`, the taps, and the forward of the zoo."""

    def __init__(self, *, width: int, heads: nn.ModuleDict, dropout: float,
                 front: nn.Module | None) -> None:
        super().__init__()
        # (batch, *input_shape) -> (batch, in_features): flattened, or a table's embeddings
        self.front = front if front is not None else nn.Flatten()
        self.heads = heads  # task -> tower: (batch, width) -> (batch, output_size)
        self.tower_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.trunk_features = width * len(heads)

    def tower_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return task -> its tower input (batch, width) for flattened x (batch, in_features)."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Return (logits per task, taps): "trunk" (batch, trunk_features), "task:<name>" (batch, width)."""
        inputs = self.tower_inputs(self.front(x))
        logits = {task: head(self.tower_dropout(inputs[task])) for task, head in self.heads.items()}
        taps = {"trunk": torch.cat([inputs[task] for task in self.heads], dim=1)}
        taps.update({f"task:{task}": features for task, features in inputs.items()})
        return logits, taps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return logits per task, each (batch, output_size)."""
        return self.forward_features(x)[0]


class MMoE(GatedExperts):
    """`experts` shared experts; per task a gate Linear(in_features, experts) on the input."""

    def __init__(self, *, in_features: int, experts: int, expert: Sequence[int], heads: nn.ModuleDict,
                 dropout: float, front: nn.Module | None = None) -> None:
        super().__init__(width=expert[-1], heads=heads, dropout=dropout, front=front)
        self.experts = nn.ModuleList(expert_mlp(in_features, expert) for _ in range(experts))
        self.gates = nn.ModuleDict({task: nn.Linear(in_features, experts) for task in heads})

    def gate_weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return task -> its gate's softmax over the experts, (batch, experts), for raw inputs x."""
        flat = self.front(x)
        return {task: torch.softmax(gate(flat), dim=-1) for task, gate in self.gates.items()}

    def tower_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = [expert(x) for expert in self.experts]  # experts x (batch, width)
        return {task: mix(gate(x), outputs) for task, gate in self.gates.items()}

    def last_shared_layer(self) -> nn.Module:
        """Return the last expert's last Linear (GradNorm's gradient probe).

        The experts are the only layers every task uses (the gates are per task), and every
        task's softmax gives every expert a weight above 0, so each task's loss reaches it.
        """
        return self.experts[-1][-2]


class ExtractionLevel(nn.Module):
    """One CGC level: shared and per-task experts, a gate per task, and (between levels) a shared gate."""

    def __init__(self, *, in_features: int, expert: Sequence[int], tasks: Sequence[str],
                 shared_experts: int, task_experts: int, last: bool) -> None:
        super().__init__()
        self.shared = nn.ModuleList(expert_mlp(in_features, expert) for _ in range(shared_experts))
        self.task_experts = nn.ModuleDict({
            task: nn.ModuleList(expert_mlp(in_features, expert) for _ in range(task_experts))
            for task in tasks})
        # Task k's gate weighs its own experts, then the shared ones.
        self.gates = nn.ModuleDict({task: nn.Linear(in_features, task_experts + shared_experts)
                                    for task in tasks})
        # The shared gate weighs every expert (each task's, then the shared ones) into the next
        # level's shared input; the last level feeds only towers and has none.
        every = len(tasks) * task_experts + shared_experts
        self.shared_gate = None if last else nn.Linear(in_features, every)

    def forward(self, inputs: dict[str, torch.Tensor], shared: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Map task -> (batch, in_features) and shared (batch, in_features) to the next level's inputs."""
        shared_out = [expert(shared) for expert in self.shared]  # shared_experts x (batch, width)
        task_out = {task: [expert(inputs[task]) for expert in experts]
                    for task, experts in self.task_experts.items()}
        outputs = {task: mix(gate(inputs[task]), task_out[task] + shared_out)
                   for task, gate in self.gates.items()}
        if self.shared_gate is None:
            return outputs, None
        every = [out for task in self.task_experts for out in task_out[task]] + shared_out
        return outputs, mix(self.shared_gate(shared), every)


class PLE(GatedExperts):
    """`levels` extraction levels; the first sees the input, each later one the previous level's outputs."""

    def __init__(self, *, in_features: int, levels: int, shared_experts: int, task_experts: int,
                 expert: Sequence[int], heads: nn.ModuleDict, dropout: float,
                 front: nn.Module | None = None) -> None:
        super().__init__(width=expert[-1], heads=heads, dropout=dropout, front=front)
        self.levels = nn.ModuleList(
            ExtractionLevel(in_features=in_features if level == 0 else expert[-1], expert=expert,
                            tasks=list(heads), shared_experts=shared_experts,
                            task_experts=task_experts, last=level == levels - 1)
            for level in range(levels))

    def tower_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs: dict[str, torch.Tensor] = {task: x for task in self.heads}
        shared: torch.Tensor | None = x
        for level in self.levels:
            assert shared is not None  # only the last level returns no shared output
            inputs, shared = level(inputs, shared)
        return inputs

    def last_shared_layer(self) -> nn.Module:
        """Return the last level's last shared expert's last Linear (GradNorm's gradient probe).

        Shared experts are the only layers every task's gate weighs (task experts belong to one
        task); in the last level they sit closest to the towers, as a trunk's last layer does.
        """
        return self.levels[-1].shared[-1][-2]
