"""Architecture zoo: a shared trunk, one head per task, and a named feature tap at the trunk.

Every model maps x (batch, *input_shape) to {task: (batch, output_size)} and exposes
`forward_features(x) -> (logits, {"trunk": (batch, trunk_features)})` for feature distillation.
    mlp     inputs of any shape, flattened; trunk = Linear+ReLU(+Dropout) per `trunk` width
    cnn1d   sequences (batch, channels, length) or (batch, length); per `channels` entry a
            Conv1d(kernel_size, same padding)+ReLU+MaxPool(2), then global average pooling and
            the dense `trunk` layers
    cnn2d   images (batch, channels, height, width) or (batch, height, width); as cnn1d in 2-D
    resnet, mobilenet
            images as cnn2d; a residual body (archs_vision.py), global average pooling and the
            dense `trunk` layers
    mmoe, ple
            gated mixtures of experts (archs_mtl.py): no shared trunk; "trunk" taps the towers'
            inputs side by side, and "task:<name>" each one
Heads are Linear+ReLU per `head` width, then Linear to the task's output size (for mmoe and ple,
the task towers).

With a table `layout` (the embedding encoding, datasets/splits.TableLayout), mlp, mmoe and ple
start with a TabularEmbedding (tabular.py) instead of the flatten: their first layer takes the
numeric columns and one embedding per categorical column side by side. The convolutional
architectures refuse a layout.
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from app.training.archs_mtl import MMoE, PLE
from app.training.archs_text import build_text_model
from app.training.archs_vision import ResidualBlock, residual_body
from app.training.catalog import ARCH_INPUT_RANKS, EMBEDDING_ARCHS
from app.training.datasets.splits import TableLayout
from app.training.datasets.text_inputs import TextInputs
from app.training.spec import ArchSpec, TaskSpec
from app.training.tabular import TabularEmbedding


def output_size(task: TaskSpec) -> int:
    """Return the number of logits a head emits for a task (1 for binary/regression)."""
    return task.num_classes if task.kind in ("multiclass", "multilabel") else 1


class MultiTaskNet(nn.Module):
    """A shared trunk (nn.Sequential) whose output feeds one head per task."""

    def __init__(self, *, trunk: nn.Sequential, trunk_features: int, head: Sequence[int],
                 outputs: dict[str, int]) -> None:
        super().__init__()
        # The trunk's last dropout runs after the feature tap, before the heads: the tap is then
        # the same point in training and in eval mode, where teacher features are taken.
        layers = list(trunk)
        self.trunk_dropout = layers.pop() if layers and isinstance(layers[-1], nn.Dropout) else nn.Identity()
        self.trunk = nn.Sequential(*layers)
        self.trunk_features = trunk_features
        self.heads = _heads(trunk_features, head, outputs)

    def forward_features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Return (logits per task, feature taps); taps: {"trunk": (batch, trunk_features)}."""
        features = self.trunk(x)  # (batch, trunk_features)
        dropped = self.trunk_dropout(features)
        logits = {task: head(dropped) for task, head in self.heads.items()}  # task -> (batch, out)
        return logits, {"trunk": features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return logits per task, each (batch, output_size)."""
        return self.forward_features(x)[0]

    def last_shared_layer(self) -> nn.Module | None:
        """Return the trunk's last layer with weights (GradNorm's gradient probe), if any.

        In a residual block that is its main path's last conv (a shortcut conv exists only
        where the shape changes).
        """
        layers = [m for module in self.trunk
                  for m in (module.main if isinstance(module, ResidualBlock) else [module])
                  if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
        return layers[-1] if layers else None


class MultiTaskMLP(MultiTaskNet):
    """MLP with a shared trunk of Linear+ReLU(+Dropout) and a Linear+ReLU stack per task head."""

    def __init__(self, *, in_features: int, trunk: Sequence[int], head: Sequence[int],
                 dropout: float, outputs: dict[str, int], front: nn.Module | None = None) -> None:
        # (batch, *input_shape) -> (batch, in_features): flattened, or a table's embeddings
        layers: list[nn.Module] = [front if front is not None else nn.Flatten()]
        width = _dense_layers(layers, in_features, trunk, dropout)
        super().__init__(trunk=nn.Sequential(*layers), trunk_features=width, head=head, outputs=outputs)


class MultiTaskCNN(MultiTaskNet):
    """Conv+ReLU+MaxPool blocks, global average pooling, dense trunk layers; 1-D or 2-D."""

    def __init__(self, *, dims: int, input_shape: Sequence[int], channels: Sequence[int],
                 kernel_size: int, trunk: Sequence[int], head: Sequence[int], dropout: float,
                 outputs: dict[str, int]) -> None:
        conv, pool = (nn.Conv1d, nn.MaxPool1d) if dims == 1 else (nn.Conv2d, nn.MaxPool2d)
        layers: list[nn.Module] = []
        if len(input_shape) == dims:  # no channel axis: (batch, *spatial) -> (batch, 1, *spatial)
            layers.append(nn.Unflatten(1, (1, input_shape[0])))
            input_shape = [1, *input_shape]
        width, spatial = input_shape[0], list(input_shape[1:])
        for out_channels in channels:
            layers += [conv(width, out_channels, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            if min(spatial) >= 2:  # halve while there is something to halve
                layers.append(pool(2))
                spatial = [size // 2 for size in spatial]
            width = out_channels
        # (batch, width, *spatial) -> (batch, width): global average pooling
        layers.append(GlobalAveragePool(dims))
        width = _dense_layers(layers, width, trunk, dropout)
        super().__init__(trunk=nn.Sequential(*layers), trunk_features=width, head=head, outputs=outputs)


class GlobalAveragePool(nn.Module):
    """Average over the last `dims` (spatial) axes: (batch, channels, *spatial) -> (batch, channels)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.axes = tuple(range(-dims, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.axes)


def _dense_layers(layers: list[nn.Module], width: int, widths: Sequence[int], dropout: float) -> int:
    """Append Linear+ReLU(+Dropout) per width to `layers`; return the last width."""
    for next_width in widths:
        layers += [nn.Linear(width, next_width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = next_width
    return width


def _heads(in_features: int, widths: Sequence[int], outputs: dict[str, int]) -> nn.ModuleDict:
    """Return task -> Linear+ReLU per width, then Linear to the task's output size."""
    heads = nn.ModuleDict()
    for task, out_features in outputs.items():
        layers: list[nn.Module] = []
        width = in_features
        for next_width in widths:
            layers += [nn.Linear(width, next_width), nn.ReLU()]
            width = next_width
        layers.append(nn.Linear(width, out_features))
        heads[task] = nn.Sequential(*layers)
    return heads


def _check_rank(arch: ArchSpec, input_shape: Sequence[int]) -> None:
    if len(input_shape) not in ARCH_INPUT_RANKS[arch.type]:
        raise ValueError(f"{arch.type} needs inputs of rank {ARCH_INPUT_RANKS[arch.type]} "
                         f"(without the batch axis), got shape {list(input_shape)}")


def _front(input_shape: Sequence[int], layout: TableLayout | None) -> tuple[nn.Module | None, int]:
    """Return (the input front-end, its output width): None (flatten) without a layout."""
    if layout is None:
        return None, math.prod(input_shape)
    if list(input_shape) != [layout.width]:
        raise ValueError(f"the table layout ({layout.numeric} numeric + {len(layout.cardinalities)} "
                         f"categorical columns) does not fit inputs of shape {list(input_shape)}")
    front = TabularEmbedding(layout)
    return front, front.out_features


def build_mlp(arch: ArchSpec, *, input_shape: Sequence[int], outputs: dict[str, int],
              layout: TableLayout | None = None) -> nn.Module:
    """Build a MultiTaskMLP; inputs of any shape are flattened (or embedded, with a layout)."""
    assert arch.trunk is not None  # filled in by ArchSpec
    front, width = _front(input_shape, layout)
    return MultiTaskMLP(in_features=width, trunk=arch.trunk, head=arch.head,
                        dropout=arch.dropout, outputs=outputs, front=front)


def build_cnn(arch: ArchSpec, *, input_shape: Sequence[int], outputs: dict[str, int]) -> nn.Module:
    """Build a 1-D or 2-D MultiTaskCNN for inputs with or without a channel axis."""
    _check_rank(arch, input_shape)
    assert arch.channels is not None and arch.kernel_size is not None and arch.trunk is not None
    return MultiTaskCNN(dims=1 if arch.type == "cnn1d" else 2, input_shape=input_shape,
                        channels=arch.channels, kernel_size=arch.kernel_size, trunk=arch.trunk,
                        head=arch.head, dropout=arch.dropout, outputs=outputs)


def build_residual_cnn(arch: ArchSpec, *, input_shape: Sequence[int], outputs: dict[str, int]) -> nn.Module:
    """Build a resnet or mobilenet: residual body, global average pooling, dense trunk, heads."""
    _check_rank(arch, input_shape)
    assert arch.channels is not None and arch.blocks is not None and arch.trunk is not None
    layers, width = residual_body(arch.type, input_shape=input_shape, channels=arch.channels,
                                  blocks=arch.blocks, expansion=arch.expansion or 1)
    layers.append(GlobalAveragePool(2))  # (batch, width, h, w) -> (batch, width)
    width = _dense_layers(layers, width, arch.trunk, arch.dropout)
    return MultiTaskNet(trunk=nn.Sequential(*layers), trunk_features=width, head=arch.head,
                        outputs=outputs)


def build_mmoe(arch: ArchSpec, *, input_shape: Sequence[int], outputs: dict[str, int],
               layout: TableLayout | None = None) -> nn.Module:
    """Build an MMoE whose towers follow the head convention; inputs flattened (or embedded)."""
    assert arch.experts is not None and arch.expert is not None  # filled in by ArchSpec
    front, width = _front(input_shape, layout)
    return MMoE(in_features=width, experts=arch.experts, expert=arch.expert,
                heads=_heads(arch.expert[-1], arch.head, outputs), dropout=arch.dropout, front=front)


def build_ple(arch: ArchSpec, *, input_shape: Sequence[int], outputs: dict[str, int],
              layout: TableLayout | None = None) -> nn.Module:
    """Build a PLE whose towers follow the head convention; inputs flattened (or embedded)."""
    assert arch.levels is not None and arch.expert is not None  # filled in by ArchSpec
    assert arch.shared_experts is not None and arch.task_experts is not None
    front, width = _front(input_shape, layout)
    return PLE(in_features=width, levels=arch.levels,
               shared_experts=arch.shared_experts, task_experts=arch.task_experts,
               expert=arch.expert, heads=_heads(arch.expert[-1], arch.head, outputs),
               dropout=arch.dropout, front=front)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": build_mlp, "cnn1d": build_cnn, "cnn2d": build_cnn, "resnet": build_residual_cnn,
    "mobilenet": build_residual_cnn, "mmoe": build_mmoe, "ple": build_ple,
    "transformer": build_text_model}


def build_model(arch: ArchSpec, *, input_shape: Sequence[int], tasks: Sequence[TaskSpec],
                layout: TableLayout | None = None, text: TextInputs | None = None) -> nn.Module:
    """Build a zoo model with one head per task; forward(x) -> {task: logits}.

    `layout`: the inputs are a table's numbers and category codes (the embedding encoding);
    only the architectures in EMBEDDING_ARCHS take one.
    """
    outputs = {task.name: output_size(task) for task in tasks}
    if arch.type == "transformer":  # tokenised text: `text` names the tokenizer and backbones
        return build_text_model(arch, input_shape=input_shape, outputs=outputs, text=text)
    if layout is None:
        return ARCHITECTURES[arch.type](arch, input_shape=input_shape, outputs=outputs)
    if arch.type not in EMBEDDING_ARCHS:
        raise ValueError(f"{arch.type} cannot read a table's category codes; use one of "
                         f"{', '.join(EMBEDDING_ARCHS)}, or dataset.encoding 'onehot'")
    return ARCHITECTURES[arch.type](arch, input_shape=input_shape, outputs=outputs, layout=layout)


def count_params(model: nn.Module) -> int:
    """Return the number of parameters of a model."""
    return sum(p.numel() for p in model.parameters())
