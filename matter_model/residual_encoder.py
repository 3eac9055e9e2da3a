"""Surface Residual Encoder: a dense, window-wise Deep-TEN encoding layer.

For pixel features x_n (dim D), learned cluster centres q_v and smoothing factors s_v
(v = 0..Y-1), the soft assignments are ``theta_nv = softmax_v(-s_v ||x_n - q_v||^2)``. For the
window W (``window`` x ``window``, cut at the image border) around every pixel the residuals
aggregate to

    e_v = sum_{n in W} theta_nv (x_n - q_v)
        = sum_{n in W} theta_nv x_n - (sum_{n in W} theta_nv) q_v,

computed for every pixel at once with stride-1 box sums. The flattened (Y*D) vector is
L2-normalised and projected to E dims: ``(sum_v P_v e_v) / ||e|| + b``. The loop over codewords
accumulates both sums, so no (B, N, Y, D) residual tensor exists; during training each codeword's
step is checkpointed, so backward recomputes it instead of keeping Y copies of (B, D, H, W).

:meth:`ResidualEncoder.residuals` is the aggregate before any normalisation or projection: the
residuals summed over codewords and averaged over the window. Its length carries how far the
window's pixels lie from the codewords, which the unit-length embedding drops; unsupervised change
maps compare it (:mod:`matter_model.change_detection`).

:meth:`ResidualEncoder.surface_encoding` is the vector the authors' released encoder outputs,
trains and compares (Kitware/geowatch, ``rutgers_material_seg/models/resnet_enc.py`` with
``encoding.py``): their Deep-TEN ``Encoding`` layer, ``nn.LeakyReLU(-0.2)``, then the mean over
codewords. With the window's mean in place of their sum over a sub-patch's pixels (their network
pools each 7 px sub-patch to one vector first, so their sum has one term),

    s = (1/Y) sum_v LeakyReLU_{-0.2}( mean_{n in W} theta_nv (x_n - q_v) ).

The slope -0.2 is negative as released: negative residual components come out as +0.2 |r|,
so every component is >= 0 and the map is not monotonic.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# The negative slope of the authors' ``nn.LeakyReLU(-0.2)`` after their encoding layer.
AUTHORS_NEGATIVE_SLOPE = -0.2


def _line_sum(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Sum of ``x`` over the ``window`` pixels centred on each along ``dim`` (-2: columns, -1:
    rows), zeros outside: shifted views of one padded copy, added up."""
    pad, size = window // 2, x.shape[dim]
    padded = F.pad(x, (pad, pad) if dim == -1 else (0, 0, pad, pad))
    if window == 1:
        return padded.narrow(dim, 0, size).clone()
    total = padded.narrow(dim, 0, size) + padded.narrow(dim, 1, size)
    for offset in range(2, window):
        total.add_(padded.narrow(dim, offset, size))
    return total


class _BoxSum(torch.autograd.Function):
    """The separable box sum; its adjoint is itself (a centred window, zeros outside), so
    backward runs it on the gradient instead of recording 2 * window shifted views."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, window: int) -> torch.Tensor:
        ctx.window = window
        return _line_sum(_line_sum(x, window, -2), window, -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _BoxSum.apply(grad, ctx.window), None


def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum of ``x`` over the window x window neighbourhood of each pixel (zeros outside).

    Separable, by shifted adds: 2 * window reads a pixel where ``avg_pool2d``'s CPU kernel
    reads window**2, and backward reuses the same sum (the window is its own adjoint).
    """
    return _BoxSum.apply(x, window)


def window_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of ``x`` over the window x window neighbourhood of each pixel, cut at the image
    border (the pixels outside do not count)."""
    count = box_sum(x.new_ones(1, 1, *x.shape[-2:]), window)
    return box_sum(x, window) / count


def _codeword_step(
    features: torch.Tensor,
    theta: torch.Tensor,
    centre: torch.Tensor,
    projection: torch.Tensor,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One codeword's projected residual (B, E, H, W) and squared norm (B, 1, H, W)."""
    residual = box_sum(theta * features, window) - box_sum(theta, window) * centre.view(1, -1, 1, 1)
    projected = F.conv2d(residual, projection[:, :, None, None])
    return projected, residual.square().sum(1, keepdim=True)


class ResidualEncoder(nn.Module):
    """Dense residual encoding: ``forward(features (B, D, H, W), window) -> (B, E, H, W)``."""

    def __init__(self, dim: int, codewords: int, embed_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        bound = 1.0 / (codewords * dim) ** 0.5
        self.centres = nn.Parameter(torch.empty(codewords, dim).uniform_(-bound, bound))
        self.smoothing = nn.Parameter(torch.empty(codewords).uniform_(0.0, 1.0))
        self.projection = nn.Parameter(
            torch.randn(codewords, embed_dim, dim) / (codewords * dim) ** 0.5
        )
        self.bias = nn.Parameter(torch.zeros(embed_dim))

    def assignments(self, features: torch.Tensor) -> torch.Tensor:
        """Soft assignments theta (B, Y, H, W) of every pixel to every codeword."""
        dots = F.conv2d(features, self.centres[:, :, None, None])
        dist2 = (
            features.square().sum(1, keepdim=True)
            - 2 * dots
            + self.centres.square().sum(1).view(1, -1, 1, 1)
        )
        return torch.softmax(-self.smoothing.view(1, -1, 1, 1) * dist2, dim=1)

    def residuals(self, features: torch.Tensor, window: int) -> torch.Tensor:
        """Residuals (B, D, H, W) summed over codewords, averaged over the window's pixels in
        the image: ``mean_{n in W} sum_v theta_nv (x_n - q_v)``, un-normalised.

        As ``theta`` sums to 1 over codewords, the sum is ``x_n - sum_v theta_nv q_v``: a pixel's
        features less its soft-assigned centre, computed without a loop over codewords.
        """
        _check_window(window)
        assigned = F.conv2d(self.assignments(features), self.centres.T[:, :, None, None])
        return window_mean(features - assigned, window)

    def surface_encoding(
        self, features: torch.Tensor, window: int, negative_slope: float = AUTHORS_NEGATIVE_SLOPE
    ) -> torch.Tensor:
        """The authors' surface encoding (B, D, H, W) of the window around each pixel:
        ``mean_v leaky_relu(mean_{n in W} theta_nv (x_n - q_v), negative_slope)``.

        The nonlinearity acts on each codeword's aggregate, as in their ``Encoding`` layer, so
        the codewords cannot be summed first as in :meth:`residuals`: the loop over codewords
        accumulates (B, D, H, W) maps, and no (B, Y, D, H, W) tensor exists.
        """
        _check_window(window)
        theta = self.assignments(features)
        total = torch.zeros_like(features)
        for v in range(self.centres.shape[0]):
            weight = theta[:, v : v + 1]
            residual = window_mean(weight * features, window) - window_mean(
                weight, window
            ) * self.centres[v].view(1, -1, 1, 1)
            total = total + F.leaky_relu(residual, negative_slope)
        return total / self.centres.shape[0]

    def forward(self, features: torch.Tensor, window: int) -> torch.Tensor:
        _check_window(window)
        theta = self.assignments(features)
        projected = norm2 = None
        for v in range(self.centres.shape[0]):
            args = (features, theta[:, v : v + 1], self.centres[v], self.projection[v], window)
            if torch.is_grad_enabled():
                p, n = checkpoint(_codeword_step, *args, use_reentrant=False)
            else:
                p, n = _codeword_step(*args)
            projected = p if projected is None else projected + p
            norm2 = n if norm2 is None else norm2 + n
        return projected / (norm2 + self.eps).sqrt() + self.bias.view(1, -1, 1, 1)


def _check_window(window: int) -> None:
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of pixels, got {window}")
