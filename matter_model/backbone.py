"""A ResNet-family backbone that keeps full resolution, for 32 px windows and 7 px sub-patches.

The stem is one 3x3 convolution with stride 1 and no max-pool; no stage strides either, so every
pixel keeps its own feature vector (the residual encoder pools them over sub-patch windows).
Stage ``i`` has ``width * 2**i`` channels and ``blocks[i]`` basic residual blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Norm = Callable[[int], nn.Module]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels: independent of the batch size."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


NORMS: dict[str, Norm] = {"batch": nn.BatchNorm2d, "group": group_norm}


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when widths differ)."""

    def __init__(self, cin: int, cout: int, norm: Norm) -> None:
        super().__init__()
        self.conv1, self.norm1 = conv3x3(cin, cout), norm(cout)
        self.conv2, self.norm2 = conv3x3(cout, cout), norm(cout)
        self.shortcut = (
            nn.Identity()
            if cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), norm(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class Stem(nn.Sequential):
    """3x3 convolution, stride 1, normalisation, ReLU: bands -> ``width`` channels."""

    def __init__(self, in_channels: int, width: int, norm: Norm) -> None:
        super().__init__(conv3x3(in_channels, width), norm(width), nn.ReLU(inplace=True))


class Backbone(nn.Module):
    """Residual stages at full resolution; ``out_channels`` is the last stage's width."""

    def __init__(self, width: int, blocks: list[int], norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = width
        for i, count in enumerate(blocks):
            cout = width * 2**i
            for _ in range(count):
                layers.append(BasicBlock(cin, cout, norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
