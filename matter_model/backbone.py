"""A ResNet-family backbone that keeps full resolution, for 32 px windows and 7 px sub-patches.

The stem is one 3x3 convolution with stride 1 and no max-pool; no stage strides either, so every
pixel keeps its own feature vector (the residual encoder pools them over sub-patch windows).
Stage ``i`` has ``blocks[i]`` residual blocks of ``width * 2**i`` planes, of a kind from
``BLOCKS``: ``basic`` (two 3x3 convolutions, ``width * 2**i`` output channels) or ``bottleneck``
(1x1 -> 3x3 -> 1x1, ``4 * width * 2**i`` output channels: ResNet-50/101's block, which the
authors' released encoder uses with ``width`` 64 and blocks ``[3, 4, 23, 3]``, ResNet-101).

The authors' network strides stages 2-4 (a 7 px sub-patch becomes 4, 2, then 1 px) and pools
each sub-patch to one vector; here the stages keep full resolution and the residual encoder's
window does the pooling, so that one pass gives every pixel's features.
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

    expansion = 1

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


class Bottleneck(nn.Module):
    """1x1 (``planes``) -> 3x3 -> 1x1 (``expansion * planes``) with a residual connection."""

    expansion = 4

    def __init__(self, cin: int, planes: int, norm: Norm) -> None:
        super().__init__()
        cout = self.expansion * planes
        self.conv1, self.norm1 = nn.Conv2d(cin, planes, 1, bias=False), norm(planes)
        self.conv2, self.norm2 = conv3x3(planes, planes), norm(planes)
        self.conv3, self.norm3 = nn.Conv2d(planes, cout, 1, bias=False), norm(cout)
        self.shortcut = (
            nn.Identity()
            if cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), norm(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = F.relu(self.norm2(self.conv2(out)))
        return F.relu(self.norm3(self.conv3(out)) + self.shortcut(x))


# Residual blocks by name: ``block(cin, planes, norm)`` outputs ``block.expansion * planes``.
BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


class Stem(nn.Sequential):
    """3x3 convolution, stride 1, normalisation, ReLU: bands -> ``width`` channels."""

    def __init__(self, in_channels: int, width: int, norm: Norm) -> None:
        super().__init__(conv3x3(in_channels, width), norm(width), nn.ReLU(inplace=True))


class InputConcat(nn.Module):
    """The refined features concatenated with the raw bands, then a 3x3 convolution, a
    normalisation and a ReLU back to ``width`` channels: the authors' ``conv1``, which sees the
    PAMR-refined stem features beside the sub-patch's own pixels."""

    def __init__(self, width: int, in_channels: int, norm: Norm) -> None:
        super().__init__()
        self.conv, self.norm = conv3x3(width + in_channels, width), norm(width)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(torch.cat([features, image.to(features.dtype)], 1))))


class Backbone(nn.Module):
    """Residual stages at full resolution; ``out_channels`` is the last stage's width."""

    def __init__(
        self, width: int, blocks: list[int], norm: Norm = nn.BatchNorm2d, block: str = "basic"
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; choose one of {sorted(BLOCKS)}")
        kind = BLOCKS[block]
        layers: list[nn.Module] = []
        cin = width
        for i, count in enumerate(blocks):
            for _ in range(count):
                layers.append(kind(cin, width * 2**i, norm))
                cin = kind.expansion * width * 2**i
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
