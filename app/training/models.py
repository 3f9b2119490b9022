"""Architecture zoo: a shared trunk, one head per task, and named feature taps for feature KD."""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from app.training.spec import ArchSpec, TaskSpec


def output_size(task: TaskSpec) -> int:
    """Return the number of logits a head emits for a task (1 for binary/regression)."""
    return task.num_classes if task.kind in ("multiclass", "multilabel") else 1


class MultiTaskMLP(nn.Module):
    """MLP with a shared trunk of Linear+ReLU(+Dropout) and a Linear+ReLU stack per task head."""

    def __init__(self, *, in_features: int, trunk: Sequence[int], head: Sequence[int],
                 dropout: float, outputs: dict[str, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for next_width in trunk:
            layers += [nn.Linear(width, next_width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = next_width
        self.trunk = nn.Sequential(*layers)
        self.trunk_features = width
        self.heads = nn.ModuleDict({task: _head(width, head, size) for task, size in outputs.items()})

    def forward_features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Return (logits per task, feature taps); taps: {"trunk": (batch, trunk_features)}."""
        features = self.trunk(x)  # (batch, trunk_features)
        logits = {task: head(features) for task, head in self.heads.items()}  # task -> (batch, out)
        return logits, {"trunk": features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return logits per task, each (batch, output_size)."""
        return self.forward_features(x)[0]


def _head(in_features: int, widths: Sequence[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


def build_mlp(arch: ArchSpec, *, input_shape: Sequence[int], outputs: dict[str, int]) -> nn.Module:
    """Build a MultiTaskMLP; inputs of any shape are flattened."""
    return MultiTaskMLP(in_features=math.prod(input_shape), trunk=arch.trunk, head=arch.head,
                        dropout=arch.dropout, outputs=outputs)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": build_mlp}


def build_model(arch: ArchSpec, *, input_shape: Sequence[int], tasks: Sequence[TaskSpec]) -> nn.Module:
    """Build a zoo model with one head per task; forward(x) -> {task: logits}."""
    outputs = {task.name: output_size(task) for task in tasks}
    return ARCHITECTURES[arch.type](arch, input_shape=input_shape, outputs=outputs)


def count_params(model: nn.Module) -> int:
    """Return the number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())
