"""Atrous spatial pyramid pooling (ASPP) after the backbone, as in the authors' released encoder.

Their ``ASPP(2048, 256, 256)`` (Kitware/geowatch, ``rutgers_material_seg/models/resnet_enc.py``)
runs five branches on the backbone's output, each a convolution without bias, a normalisation and
a ReLU: a 1x1 convolution, three 3x3 convolutions at dilations 6, 12 and 18, and image pooling
(the mean over the map, a 1x1 convolution, broadcast back). Their concatenation goes through a
1x1 convolution to ``channels``, a normalisation and a ReLU, then a 1x1 convolution with bias to
``channels`` again, with no ReLU: the features the encoding layer reads.

Their map is one pixel per 7 px sub-patch (strided stages, then average pooling), so there the
dilated convolutions see only their centre tap and the image pooling is the identity. At full
resolution both see context: the dilated taps reach 6-18 px away (zeros outside the image), and
``pool`` chooses the image pooling's extent: the window of ``pool`` px around each pixel (cut at
the border; with the sub-patch size it pools what their network pools), or, with ``None``, the
whole input, which makes every pixel's features depend on the size of the tile it is run in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from matter_model.residual_encoder import window_mean

Norm = Callable[[int], nn.Module]
DILATIONS = (6, 12, 18)


def _branch(conv: nn.Conv2d, norm: Norm) -> nn.Sequential:
    return nn.Sequential(conv, norm(conv.out_channels), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """``forward(x (B, cin, H, W)) -> (B, channels, H, W)``; see the module docstring."""

    def __init__(
        self,
        cin: int,
        channels: int,
        norm: Norm = nn.BatchNorm2d,
        dilations: tuple[int, ...] = DILATIONS,
        pool: int | None = 7,
    ) -> None:
        super().__init__()
        if pool is not None and (pool < 1 or pool % 2 == 0):
            raise ValueError(f"aspp pool must be a positive odd number of pixels, got {pool}")
        self.pool = pool
        self.branches = nn.ModuleList(
            [_branch(nn.Conv2d(cin, channels, 1, bias=False), norm)]
            + [
                _branch(nn.Conv2d(cin, channels, 3, padding=d, dilation=d, bias=False), norm)
                for d in dilations
            ]
        )
        self.image_pool = _branch(nn.Conv2d(cin, channels, 1, bias=False), norm)
        self.project = _branch(
            nn.Conv2d(channels * (len(dilations) + 2), channels, 1, bias=False), norm
        )
        self.out = nn.Conv2d(channels, channels, 1)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The input averaged over each pixel's ``pool`` window, or over the whole map."""
        if self.pool is None:
            return x.mean(dim=(2, 3), keepdim=True)
        return window_mean(x, self.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(self.pooled(x)).expand(-1, -1, *x.shape[-2:])
        branches = [branch(x) for branch in self.branches] + [pooled]
        return self.out(self.project(torch.cat(branches, dim=1)))
