"""Pixel-adaptive convolution (PAC) without the unfolded (B, Cin*k*k, H*W) tensor.

``pac2d`` loops over the k*k neighbour offsets. For each offset it mixes channels with a 1x1
convolution on the zero-padded input, takes the shifted view that lines up with the output, scales
it by that offset's adaptive kernel plane and accumulates. The backward pass is written by hand
and loops the same way (recomputing each offset's channel mix), so neither direction holds more
than a few (B, C, H, W) temporaries at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx


def _offsets(k: int, dilation: int, height: int, width: int):
    """Yield (index, dy, dx, row slice, column slice) of every offset into the padded input."""
    for dy in range(k):
        for dx in range(k):
            rows = slice(dy * dilation, dy * dilation + height)
            cols = slice(dx * dilation, dx * dilation + width)
            yield dy * k + dx, dy, dx, rows, cols


def neighbour_views(x: torch.Tensor, k: int, dilation: int = 1) -> list[torch.Tensor]:
    """Shifted views of zero-padded ``x``, one per offset of a k x k window, row-major.

    ``views[dy*k+dx][..., y, x] == x[..., y + (dy-k//2)*dilation, x + (dx-k//2)*dilation]`` (zero
    outside the image). The views share the padded tensor's memory: nothing is unfolded.
    """
    height, width = x.shape[-2:]
    pad = (k // 2) * dilation
    x_pad = F.pad(x, (pad, pad, pad, pad))
    return [x_pad[..., rows, cols] for _, _, _, rows, cols in _offsets(k, dilation, height, width)]


class _PAC2d(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        kernel: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        dilation: int,
    ) -> torch.Tensor:
        k = weight.shape[-1]
        height, width = x.shape[-2:]
        pad = (k // 2) * dilation
        x_pad = F.pad(x, (pad, pad, pad, pad))
        out = None
        for i, dy, dx, rows, cols in _offsets(k, dilation, height, width):
            mix = F.conv2d(x_pad, weight[:, :, dy : dy + 1, dx : dx + 1])[..., rows, cols]
            term = kernel[:, i : i + 1] * mix
            out = term if out is None else out + term
        if bias is not None:
            out = out + bias.view(1, -1, 1, 1)
        ctx.save_for_backward(x, kernel, weight)
        ctx.has_bias = bias is not None
        ctx.dilation = dilation
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor):
        x, kernel, weight = ctx.saved_tensors
        dilation = ctx.dilation
        need_x, need_kernel, need_weight, need_bias, _ = ctx.needs_input_grad
        k = weight.shape[-1]
        height, width = x.shape[-2:]
        pad = (k // 2) * dilation
        x_pad = F.pad(x, (pad, pad, pad, pad))
        grad_x_pad = torch.zeros_like(x_pad) if need_x else None
        grad_kernel = torch.empty_like(kernel) if need_kernel else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        for i, dy, dx, rows, cols in _offsets(k, dilation, height, width):
            w = weight[:, :, dy : dy + 1, dx : dx + 1]
            if need_kernel:
                mix = F.conv2d(x_pad, w)[..., rows, cols]
                grad_kernel[:, i] = (grad_out * mix).sum(1)
            if need_x or need_weight:
                scaled = grad_out * kernel[:, i : i + 1]
                if need_x:
                    grad_x_pad[..., rows, cols] += F.conv2d(scaled, w.transpose(0, 1))
                if need_weight:
                    shifted = x_pad[..., rows, cols]
                    grad_weight[:, :, dy, dx] += torch.einsum("bohw,bchw->oc", scaled, shifted)
        grad_x = grad_x_pad[..., pad : pad + height, pad : pad + width] if need_x else None
        grad_bias = grad_out.sum((0, 2, 3)) if (ctx.has_bias and need_bias) else None
        return grad_x, grad_kernel, grad_weight, grad_bias, None


def pac2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
) -> torch.Tensor:
    """Pixel-adaptive convolution with zero padding; the output has the input's size.

    ``x`` (B, Cin, H, W); ``kernel`` (B, k*k, H, W), one adaptive weight per neighbour offset,
    offsets row-major over the k x k window; ``weight`` (Cout, Cin, k, k); ``bias`` (Cout,)::

        out[b,o,y,x] = bias[o] + sum_{c,dy,dx} kernel[b, dy*k+dx, y, x] * weight[o, c, dy, dx]
                       * x[b, c, y + (dy - k//2)*dilation, x + (dx - k//2)*dilation]
    """
    k = weight.shape[-1]
    if weight.shape[-2] != k or k % 2 == 0:
        raise ValueError(f"pac2d needs an odd square kernel, got weight {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input channels, x has {x.shape[1]}")
    expected = (x.shape[0], k * k, *x.shape[-2:])
    if tuple(kernel.shape) != expected:
        raise ValueError(f"kernel has shape {tuple(kernel.shape)}, expected {expected}")
    return _PAC2d.apply(x, kernel, weight, bias, int(dilation))
