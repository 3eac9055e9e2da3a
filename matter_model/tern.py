"""Texture Refinement Network (TeRN): stacked pixel-adaptive layers that sharpen texture.

Our reading of the paper (MATTER, Akiva et al., CVPR 2022, Sec. 3.2): each layer's adaptive kernel
at pixel (i, j) weighs a neighbour (p, q) of its k x k window by the cosine similarity of their
feature vectors scaled by the inverse local variance of those similarities,

    logit_pq = cos(f_ij, f_pq) / (var_N(i,j) + eps),   kernel_ij = softmax over the window,

so that neighbours alike to the centre count more and the refinement averages within a region
but not across its edges. ``var_N`` is the variance of the window's cosine similarities; ``eps``
(config ``tern_eps``) bounds the sharpness in flat regions where the variance vanishes. Neighbours
outside the image get no weight. The kernel drives a learned ``pac2d`` convolution, added to the
input (residual) and followed by a normalisation and a ReLU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from matter_model.ops import neighbour_views, pac2d


def similarity_kernel(
    features: torch.Tensor, k: int, eps: float, dilation: int = 1
) -> torch.Tensor:
    """The (B, k*k, H, W) adaptive kernel of ``features`` (B, C, H, W); sums to 1 per pixel."""
    unit = F.normalize(features, dim=1)
    sims = torch.cat(
        [(unit * view).sum(1, keepdim=True) for view in neighbour_views(unit, k, dilation)], 1
    )
    ones = torch.ones_like(features[:1, :1])
    valid = torch.cat(neighbour_views(ones, k, dilation), 1) > 0
    count = valid.sum(1, keepdim=True)
    mean = (sims * valid).sum(1, keepdim=True) / count
    var = (((sims - mean) ** 2) * valid).sum(1, keepdim=True) / count
    logits = (sims / (var + eps)).masked_fill(~valid, float("-inf"))
    return torch.softmax(logits, dim=1)


class TeRNLayer(nn.Module):
    """One pixel-adaptive refinement layer: ``relu(norm(x + pac2d(x, kernel(x), W)))``."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        eps: float = 0.1,
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")
        self.norm = norm(channels)

    def refine(self, x: torch.Tensor) -> torch.Tensor:
        """The pixel-adaptive convolution alone (no residual, no normalisation)."""
        kernel = similarity_kernel(x, self.kernel_size, self.eps)
        return pac2d(x, kernel, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(x + self.refine(x)))


class TeRN(nn.Sequential):
    """``layers`` TeRN layers of ``channels`` channels; ``forward(x, image=None)`` takes the
    input image as the PAMR variant (:class:`matter_model.pamr.PAMR`) does, and ignores it: these
    kernels come from the features themselves."""

    def __init__(
        self,
        channels: int,
        layers: int,
        kernel_size: int = 3,
        eps: float = 0.1,
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__(*(TeRNLayer(channels, kernel_size, eps, norm) for _ in range(layers)))

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x
