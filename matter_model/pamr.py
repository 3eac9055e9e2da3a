"""PAMR-style texture refinement, the TeRN of the authors' released encoder: no learned weights.

Their ``TeRN(num_iter=10, dilations=[1, 1, 2, 4, 6, 8])`` (Kitware/geowatch,
``rutgers_material_seg/models/tex_refine.py``, built in ``resnet_enc.py``) refines the stem's
features with affinities taken from the input image I (B, K, H, W), pixels outside the image
replaced by the nearest border pixel (replicate padding):

* ``sigma`` (B, K, H, W): the standard deviation (unbiased) of each band over the 3x3 taps,
  centre included, of every dilation together: 9 taps a dilation, the centre counted once per
  dilation;
* for each of the 8 neighbours ``p + s`` of every dilation (48 with theirs; dilation 1, listed
  twice, counts twice): ``a_s = mean_k ( -|I_k(p) - I_k(p + s)| / (1e-8 + 0.1 sigma_k(p)) )``,
  then ``w = softmax_s(a)`` over all of them;
* ``iterations`` times, the features are replaced by the affinity-weighted mean of their
  neighbours (the centre pixel itself is not among them): ``m(p) <- sum_s w_s(p) m(p + s)``.

Each round loops over the distinct neighbours, so nothing larger than the (B, P, H, W) affinity
and one padded copy of the features exists; backward runs the transposed rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DILATIONS = (1, 1, 2, 4, 6, 8)
ITERATIONS = 10
SIGMA_SCALE = 0.1
EPS = 1e-8
# Features a CPU chunk of samples holds in a propagation round (see ``_rounds``).
CPU_CHUNK_BYTES = 512 * 2**10
# The 8 neighbours of a 3x3 kernel as (row, column) offsets, in units of the dilation.
RING = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def shifted(x: torch.Tensor, offsets: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Views of replicate-padded ``x``: ``views[i][..., y, x] = x[..., clamp(y + dy), clamp(x +
    dx)]`` for ``offsets[i] = (dy, dx)``, all sharing one padded copy."""
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    h, w = x.shape[-2:]
    return [padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w] for dy, dx in offsets]


def neighbour_offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    """The 8 ring offsets of every dilation, in order."""
    return [(dy * d, dx * d) for d in dilations for dy, dx in RING]


def local_sigma(image: torch.Tensor, dilations: tuple[int, ...]) -> torch.Tensor:
    """Unbiased standard deviation (B, K, H, W) over the 3x3 taps of every dilation (two passes
    over the shifted views: no stack of the taps)."""
    taps = shifted(image, [(0, 0)] * len(dilations) + neighbour_offsets(dilations))
    mean = sum(taps) / len(taps)
    return (sum((tap - mean).square() for tap in taps) / (len(taps) - 1)).sqrt()


def affinity(image: torch.Tensor, dilations: tuple[int, ...] = DILATIONS) -> torch.Tensor:
    """Neighbour weights (B, 8 * len(dilations), H, W) of ``image``, summing to 1 per pixel."""
    scale = EPS + SIGMA_SCALE * local_sigma(image, dilations)
    views = shifted(image, neighbour_offsets(dilations))
    logits = torch.cat([(-(image - v).abs() / scale).mean(1, keepdim=True) for v in views], 1)
    return torch.softmax(logits, dim=1)


def merge_offsets(
    weights: torch.Tensor, dilations: tuple[int, ...]
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Weights (B, U, H, W) of the U distinct neighbour offsets, those of a repeated dilation
    summed (theirs lists dilation 1 twice), and the offsets: the same propagation, less work."""
    offsets = neighbour_offsets(dilations)
    unique = list(dict.fromkeys(offsets))
    index = torch.tensor([unique.index(o) for o in offsets], device=weights.device)
    merged = weights.new_zeros(weights.shape[0], len(unique), *weights.shape[2:])
    return merged.index_add_(1, index, weights), unique


def _step(
    features: torch.Tensor, weights: torch.Tensor, offsets: list[tuple[int, int]]
) -> torch.Tensor:
    """One round ``m(p) <- sum_s weights_s(p) m(clamp(p + s))``."""
    views = shifted(features, offsets)
    out = weights[:, :1] * views[0]
    for i in range(1, len(views)):
        out.addcmul_(weights[:, i : i + 1], views[i])
    return out


def _step_adjoint(
    grad: torch.Tensor, weights: torch.Tensor, offsets: list[tuple[int, int]]
) -> torch.Tensor:
    """The transpose of :func:`_step`: each output's gradient goes back to the neighbours it
    read, those read through the replicate padding folded onto the border pixels."""
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    h, w = grad.shape[-2:]
    padded = grad.new_zeros(*grad.shape[:-2], h + 2 * pad, w + 2 * pad)
    for i, (dy, dx) in enumerate(offsets):
        target = padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        target.addcmul_(weights[:, i : i + 1], grad)
    padded[..., pad, :] += padded[..., :pad, :].sum(-2)
    padded[..., pad + h - 1, :] += padded[..., pad + h :, :].sum(-2)
    rows = padded[..., pad : pad + h, :]
    rows[..., pad] += rows[..., :pad].sum(-1)
    rows[..., pad + w - 1] += rows[..., pad + w :].sum(-1)
    return rows[..., pad : pad + w]


def _rounds(
    x: torch.Tensor,
    weights: torch.Tensor,
    offsets: list[tuple[int, int]],
    iterations: int,
    step: Callable[[torch.Tensor, torch.Tensor, list[tuple[int, int]]], torch.Tensor],
) -> torch.Tensor:
    """``iterations`` rounds of ``step``, a chunk of samples at a time: on CPU chunks of about
    ``CPU_CHUNK_BYTES`` of features, so that a round's passes run from cache (B 24, 16 ch,
    32 x 32, one thread: 8-sample chunks took 0.06 s forward against 0.09 s for the whole
    batch); elsewhere the whole batch."""
    per_sample = x[:1].numel() * x.element_size()
    size = max(1, CPU_CHUNK_BYTES // per_sample) if x.device.type == "cpu" else x.shape[0]
    parts = []
    for part, part_weights in zip(x.split(size), weights.split(size), strict=True):
        for _ in range(iterations):
            part = step(part, part_weights, offsets)
        parts.append(part)
    return torch.cat(parts)


class _Propagate(torch.autograd.Function):
    """``iterations`` rounds of :func:`_step`, differentiable in the features only (the weights
    come from the input image); backward applies the adjoint rounds instead of recording 10 x U
    shifted products, which took 4-5 times the forward's time."""

    @staticmethod
    def forward(
        ctx: Any,
        features: torch.Tensor,
        weights: torch.Tensor,
        offsets: list[tuple[int, int]],
        iterations: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(weights)
        ctx.offsets, ctx.iterations = offsets, iterations
        return _rounds(features, weights, offsets, iterations, _step)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (weights,) = ctx.saved_tensors
        grad = _rounds(grad.contiguous(), weights, ctx.offsets, ctx.iterations, _step_adjoint)
        return grad, None, None, None


def propagate(
    features: torch.Tensor, weights: torch.Tensor, dilations: tuple[int, ...], iterations: int
) -> torch.Tensor:
    """``iterations`` rounds of ``m(p) <- sum_s weights_s(p) m(p + s)``; ``weights`` (B, P, H, W)
    as :func:`affinity` gives them, constants (no gradient reaches them). In float32 at least,
    whatever the features' dtype: ten rounds of bf16 weights would drift."""
    if iterations == 0:
        return features
    dtype = torch.promote_types(features.dtype, torch.float32)
    merged, offsets = merge_offsets(weights.detach().to(dtype), dilations)
    return _Propagate.apply(features.to(dtype), merged, offsets, iterations)


class PAMR(nn.Module):
    """``forward(features (B, C, H, W), image (B, K, H, W)) -> (B, C, H, W)``; no parameters."""

    def __init__(self, iterations: int = ITERATIONS, dilations: tuple[int, ...] = DILATIONS):
        super().__init__()
        if iterations < 0 or not dilations or min(dilations) < 1:
            raise ValueError(
                f"PAMR needs iterations >= 0 and dilations >= 1, got {iterations}, {dilations}"
            )
        self.iterations = iterations
        self.dilations = tuple(dilations)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            weights = affinity(
                image.to(torch.promote_types(image.dtype, torch.float32)), self.dilations
            )
        return propagate(features, weights, self.dilations, self.iterations)
