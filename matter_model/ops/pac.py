"""Pixel-adaptive convolution (PAC) without the unfolded (B, Cin*k*k, H*W) tensor.

``pac2d`` works in a channels-first layout, ``(C, B*H*W)``, where a channel mix over all pixels
is one matrix product. The k*k neighbour offsets are processed in chunks of ``n`` offsets, ``n``
set so that a chunk's buffers stay under ``CHUNK_BYTES``:

* forward: ``scaled[j] = kernel[:, i] * shift_i(x)`` for the chunk's offsets (a ``(n*Cin, BHW)``
  buffer), then one GEMM ``out += W[:, :, chunk] @ scaled``;
* backward: the same ``scaled`` buffer gives ``grad_weight[:, :, chunk] = grad_out @ scaled.T``
  (one GEMM); one transposed GEMM ``mixed = W[:, :, chunk].T @ grad_out`` gives both
  ``grad_kernel[:, i] = sum_c mixed[j] * shift_i(x)`` and ``grad_x += unshift_i(kernel[:, i] *
  mixed[j])``, because the adaptive kernel is a per-pixel scalar that commutes with the channel
  mix.

So forward and backward cost the three GEMMs of a dense convolution plus a few elementwise passes
per offset, and the largest temporaries are two chunk buffers: nothing of size Cin*k*k*B*H*W.
The ops are plain torch ops, so the same code runs on CPU and CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx

# Upper bound on one chunk buffer, (offsets in the chunk) * Cin * B*H*W elements. Small chunks
# stay closer to the cache; on 2 CPU cores 8-16 MiB was fastest at B=8, C=64, 64x64.
CHUNK_BYTES = 16 * 2**20


def _offsets(k: int, dilation: int, height: int, width: int):
    """Yield (index, row slice, column slice) of every offset into the padded input."""
    for dy in range(k):
        for dx in range(k):
            rows = slice(dy * dilation, dy * dilation + height)
            cols = slice(dx * dilation, dx * dilation + width)
            yield dy * k + dx, rows, cols


def neighbour_views(x: torch.Tensor, k: int, dilation: int = 1) -> list[torch.Tensor]:
    """Shifted views of zero-padded ``x``, one per offset of a k x k window, row-major.

    ``views[dy*k+dx][..., y, x] == x[..., y + (dy-k//2)*dilation, x + (dx-k//2)*dilation]`` (zero
    outside the image). The views share the padded tensor's memory: nothing is unfolded.
    """
    height, width = x.shape[-2:]
    pad = (k // 2) * dilation
    x_pad = F.pad(x, (pad, pad, pad, pad))
    return [x_pad[..., rows, cols] for _, rows, cols in _offsets(k, dilation, height, width)]


def _chunks(k: int, dilation: int, x: torch.Tensor):
    """Yield lists of consecutive offsets (index, rows, cols), each within ``CHUNK_BYTES``."""
    b, c, h, w = x.shape
    per_offset = c * b * h * w * x.element_size()
    size = max(1, min(k * k, CHUNK_BYTES // max(per_offset, 1)))
    offsets = list(_offsets(k, dilation, h, w))
    for start in range(0, len(offsets), size):
        yield offsets[start : start + size]


def _scaled_shifts(
    x_pad_t: torch.Tensor, kernel_t: torch.Tensor, chunk: list, buffer: torch.Tensor
) -> torch.Tensor:
    """``buffer[j] = kernel[:, i] * shift_i(x)`` for the chunk's offsets, as (n*Cin, B*H*W)."""
    scaled = buffer[: len(chunk)]
    for j, (i, rows, cols) in enumerate(chunk):
        torch.mul(x_pad_t[..., rows, cols], kernel_t[i], out=scaled[j])
    return scaled.view(len(chunk) * scaled.shape[1], -1)


class _PAC2d(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        kernel: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        dilation: int,
    ) -> torch.Tensor:
        b, cin, h, w = x.shape
        cout, k = weight.shape[0], weight.shape[-1]
        pad = (k // 2) * dilation
        x_pad_t = F.pad(x, (pad, pad, pad, pad)).transpose(0, 1).contiguous()  # (Cin, B, Hp, Wp)
        kernel_t = kernel.transpose(0, 1)  # (k*k, B, H, W)
        w_rows = weight.permute(0, 2, 3, 1).reshape(cout, k * k * cin)  # offset-major columns
        out_t = x.new_zeros(cout, b * h * w)
        buffer = None
        for chunk in _chunks(k, dilation, x):
            if buffer is None:
                buffer = x.new_empty(len(chunk), cin, b, h, w)
            scaled = _scaled_shifts(x_pad_t, kernel_t, chunk, buffer)
            first = chunk[0][0]
            out_t.addmm_(w_rows[:, first * cin : (first + len(chunk)) * cin], scaled)
        out = out_t.view(cout, b, h, w).transpose(0, 1).contiguous()
        if bias is not None:
            out += bias.view(1, -1, 1, 1)
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
        b, cin, h, w = x.shape
        cout, k = weight.shape[0], weight.shape[-1]
        pad = (k // 2) * dilation
        x_pad_t = F.pad(x, (pad, pad, pad, pad)).transpose(0, 1).contiguous()
        kernel_t = kernel.transpose(0, 1)
        w_rows = weight.permute(0, 2, 3, 1).reshape(cout, k * k * cin)
        # contiguous: a reshape of an expanded gradient (e.g. of ``out.sum()``) is a stride-0
        # view, which every GEMM below would otherwise copy again.
        grad_t = grad_out.transpose(0, 1).reshape(cout, b * h * w).contiguous()
        grad_x_pad_t = torch.zeros_like(x_pad_t) if need_x else None
        grad_kernel_t = kernel.new_empty(k * k, b, h, w) if need_kernel else None
        grad_w_rows = torch.empty_like(w_rows) if need_weight else None
        scaled_buffer = mixed_buffer = None
        for chunk in _chunks(k, dilation, x):
            n, first = len(chunk), chunk[0][0]
            columns = slice(first * cin, (first + n) * cin)
            if need_weight:
                if scaled_buffer is None:
                    scaled_buffer = x.new_empty(n, cin, b, h, w)
                scaled = _scaled_shifts(x_pad_t, kernel_t, chunk, scaled_buffer)
                grad_w_rows[:, columns] = grad_t @ scaled.T
            if need_x or need_kernel:
                if mixed_buffer is None:
                    mixed_buffer = x.new_empty(n, cin, b, h, w)
                mixed = mixed_buffer[:n]
                torch.mm(w_rows[:, columns].T, grad_t, out=mixed.view(n * cin, -1))
                for j, (i, rows, cols) in enumerate(chunk):
                    if need_x:
                        grad_x_pad_t[..., rows, cols].addcmul_(mixed[j], kernel_t[i])
                    if need_kernel:
                        torch.sum(mixed[j].mul_(x_pad_t[..., rows, cols]), 0, out=grad_kernel_t[i])
        grad_x = None
        if need_x:
            grad_x = grad_x_pad_t[..., pad : pad + h, pad : pad + w].transpose(0, 1).contiguous()
        grad_kernel = grad_kernel_t.transpose(0, 1).contiguous() if need_kernel else None
        grad_weight = None
        if need_weight:
            grad_weight = grad_w_rows.view(cout, k, k, cin).permute(0, 3, 1, 2).contiguous()
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

    Under CUDA autocast it computes in float32.
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
