"""Residual image bodies for the zoo: ResNet basic blocks and MobileNetV2 inverted residuals.

A body maps images (batch, channels, height, width), or (batch, height, width) read as one
channel, to feature maps (batch, channels[-1], height', width'); models.py adds global average
pooling, the dense trunk and the task heads. Stage i has blocks[i] blocks of width channels[i];
the first block of every stage after the first halves the spatial size (stride 2).
    resnet     3x3 conv+BN+ReLU stem, basic blocks (He et al. 2016)
    mobilenet  3x3 conv+BN+ReLU6 stem, inverted residuals (Sandler et al. 2018)
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """A block whose main path is `main` (nn.Sequential); its last conv is GradNorm's probe."""

    main: nn.Sequential


class BasicBlock(ResidualBlock):
    """ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x)); 1x1 conv+BN shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.main(x) + self.shortcut(x))


class InvertedResidual(ResidualBlock):
    """1x1 expand+BN+ReLU6, 3x3 depthwise+BN+ReLU6, 1x1 project+BN (linear); x added when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:  # as in MobileNetV2, no expansion layer when it would not widen
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.main = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        return out + x if self.residual else out


# Each body's stem activation and its block, built as block(in_channels, out_channels, stride).
BODIES: dict[str, tuple[Callable[[], nn.Module], Callable[..., ResidualBlock]]] = {
    "resnet": (nn.ReLU, BasicBlock),
    "mobilenet": (nn.ReLU6, InvertedResidual),
}


def residual_body(kind: str, *, input_shape: Sequence[int], channels: Sequence[int],
                  blocks: Sequence[int], expansion: int = 1) -> tuple[list[nn.Module], int]:
    """Return the body's layers (stem, then the blocks of every stage, flat) and its output channels."""
    activation, block = BODIES[kind]
    extra = {"expansion": expansion} if kind == "mobilenet" else {}
    layers: list[nn.Module] = []
    if len(input_shape) == 2:  # no channel axis: (batch, height, width) -> (batch, 1, height, width)
        layers.append(nn.Unflatten(1, (1, input_shape[0])))
        input_shape = [1, *input_shape]
    width = channels[0]
    layers += [nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
               activation()]
    for stage, (out_channels, count) in enumerate(zip(channels, blocks, strict=True)):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            layers.append(block(width, out_channels, stride, **extra))
            width = out_channels
    return layers, width
