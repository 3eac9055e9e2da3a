"""Pixel-adaptive convolution (PAC) without the unfolded (B, Cin*k*k, H*W) tensor.

``pac2d`` works tile by tile: a band of rows of one sample, sized so that a tile's buffer of
``C*k*k`` values per pixel stays within ``TILE_BYTES`` (on CPU, within the cache, so that the
elementwise passes do not stream through memory). With ``s_j`` the shift
of neighbour offset ``j``, ``flip(j)`` the opposite offset (``s_flip(j) = -s_j``) and ``W`` the
weight as a ``(Cout, Cin*k*k)`` matrix, per tile of pixels ``p``:

* forward: ``scaled[c, j, p] = kernel[j, p] * x[c, p + s_j]``, one multiply of the adaptive
  kernel with an overlapping strided view of the padded input (the windows are never copied),
  then one GEMM ``out[:, p] = W @ scaled`` written straight into the output;
* backward: ``gathered[o, j, q] = kernel[flip(j), q + s_j] * grad_out[o, q + s_j]``, again one
  multiply of overlapping views (of the padded gradient and the padded, offset-flipped kernel),
  is the adjoint's input at input pixel ``q``: ``grad_x[:, q] = W_flipped @ gathered`` (the
  adjoint of a PAC is a PAC with the flipped weight: a gather, no scatter-add over overlapping
  windows) and ``grad_weight_flipped += gathered @ x[:, q].T``; ``mixed = W.T @ grad_out`` gives
  ``grad_kernel[j, p] = sum_c mixed[c, j, p] * x[c, p + s_j]``.

So a forward and backward pass cost four GEMMs the size of a dense convolution's (which needs
three: the fourth, for ``grad_kernel``, is the price of the adaptive kernel) plus three
multiplies and a sum over cache-resident tiles; the largest temporaries are the tile buffers and
x-sized padded copies, nothing of size C*k*k*B*H*W. The ops are plain torch ops, so the same
code runs on CPU and CUDA (where a tile is a whole sample: there, bigger GEMMs beat locality).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx

# Upper bound on one tile buffer (C*k*k values a pixel), by device type. On CPU about the L2
# cache (2 MiB a core here), so that the elementwise passes run from cache: with one thread at
# B=8, C=64, 64 x 64, k=5 a pass took ~20% less time than with whole-sample (32 MiB) tiles. (With
# two threads on a loaded, shared machine fewer and bigger ops win instead: every op waits at a
# thread barrier for a descheduled peer; see ``benchmarks/pac2d.py``.) On CUDA bigger GEMMs
# matter more than locality: a tile is a whole sample.
TILE_BYTES = {"cpu": 2 * 2**20}
DEVICE_TILE_BYTES = 256 * 2**20


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


def _row_bands(height: int, width: int, bytes_per_pixel: int, device: torch.device):
    """Yield (first row, row count) of the tiles of one sample, each within the tile budget."""
    budget = TILE_BYTES.get(device.type, DEVICE_TILE_BYTES)
    rows = max(1, min(height, budget // max(bytes_per_pixel * width, 1)))
    for start in range(0, height, rows):
        yield start, min(rows, height - start)


def _windows(
    padded: torch.Tensor, sample: int, row: int, rows: int, k: int, dilation: int, width: int
) -> torch.Tensor:
    """(C, k, k, rows, width) view: ``[c, dy, dx, y, x] = padded[sample, c, row + y + dy*dilation,
    x + dx*dilation]``, the k x k neighbours of every pixel of a tile, overlapping in memory."""
    stride_b, stride_c, stride_h, stride_w = padded.stride()
    return padded.as_strided(
        (padded.shape[1], k, k, rows, width),
        (stride_c, dilation * stride_h, dilation * stride_w, stride_h, stride_w),
        padded.storage_offset() + sample * stride_b + row * stride_h,
    )


def _flipped_kernel_windows(
    kernel_pad: torch.Tensor, sample: int, row: int, rows: int, k: int, dilation: int, width: int
) -> torch.Tensor:
    """(1, k, k, rows, width) view of the padded (B, k*k, Hp, Wp) flipped kernel:
    ``[0, dy, dx, y, x] = kernel_pad[sample, dy*k + dx, row + y + dy*dilation, x + dx*dilation]``,
    offset ``j``'s channel read at offset ``j``'s shift."""
    stride_b, stride_j, stride_h, stride_w = kernel_pad.stride()
    return kernel_pad.as_strided(
        (1, k, k, rows, width),
        (0, k * stride_j + dilation * stride_h, stride_j + dilation * stride_w, stride_h, stride_w),
        kernel_pad.storage_offset() + sample * stride_b + row * stride_h,
    )


def _tiles(x: torch.Tensor, values_per_pixel: int) -> Iterator[tuple[int, int, int]]:
    """Yield (sample, first row, row count) over the batch, tiles sized for the device."""
    b, _, h, w = x.shape
    for sample in range(b):
        for row, rows in _row_bands(h, w, values_per_pixel * x.element_size(), x.device):
            yield sample, row, rows


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
        x = x.contiguous()
        x_pad = F.pad(x, (pad, pad, pad, pad))
        kernel = kernel.contiguous()
        kernel_tiles = kernel.view(b, 1, k, k, h, w)
        w_mat = weight.reshape(cout, cin * k * k)
        out = x.new_empty(b, cout, h, w)
        scaled = None
        for sample, row, rows in _tiles(x, cin * k * k):
            if scaled is None or scaled.shape[3] != rows:
                scaled = x.new_empty(cin, k, k, rows, w)
            window = _windows(x_pad, sample, row, rows, k, dilation, w)
            torch.mul(window, kernel_tiles[sample, ..., row : row + rows, :], out=scaled)
            out_tile = out[sample, :, row : row + rows].view(cout, rows * w)
            torch.mm(w_mat, scaled.view(cin * k * k, rows * w), out=out_tile)
        if bias is not None:
            out += bias.view(1, cout, 1, 1)
        ctx.save_for_backward(x, x_pad, kernel, weight)
        ctx.has_bias = bias is not None
        ctx.dilation = dilation
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: FunctionCtx, grad_out: torch.Tensor):
        x, x_pad, kernel, weight = ctx.saved_tensors
        dilation = ctx.dilation
        need_x, need_kernel, need_weight, need_bias, _ = ctx.needs_input_grad
        b, cout, h, w = grad_out.shape
        cin, k = weight.shape[1], weight.shape[-1]
        pad = (k // 2) * dilation
        # contiguous: a gradient like that of ``out.sum()`` is a stride-0 view, no GEMM operand.
        grad_out = grad_out.contiguous()
        grad_x = grad_kernel = grad_flipped_w = None
        if need_x or need_weight:
            grad_pad = F.pad(grad_out, (pad, pad, pad, pad))
            flipped_kernel_pad = F.pad(kernel.flip(1), (pad, pad, pad, pad))
        if need_x:
            grad_x = x.new_empty(b, cin, h, w)
            flipped_w_mat = weight.flip(2, 3).transpose(0, 1).reshape(cin, cout * k * k)
        if need_weight:
            grad_flipped_w = x.new_zeros(cout * k * k, cin)
        if need_kernel:
            grad_kernel = kernel.new_empty(b, k * k, h, w)
            w_mat_t = weight.reshape(cout, cin * k * k).T
        gathered = mixed = None
        for sample, row, rows in _tiles(grad_out, max(cin, cout) * k * k):
            if gathered is None or gathered.shape[3] != rows:
                gathered = x.new_empty(cout, k, k, rows, w)
                mixed = x.new_empty(cin, k, k, rows, w)
            pixels = slice(row, row + rows)
            if need_x or need_weight:
                # gathered[o, j, q] = kernel[flip(j), q + s_j] * grad_out[o, q + s_j]
                torch.mul(
                    _windows(grad_pad, sample, row, rows, k, dilation, w),
                    _flipped_kernel_windows(flipped_kernel_pad, sample, row, rows, k, dilation, w),
                    out=gathered,
                )
                gathered_mat = gathered.view(cout * k * k, rows * w)
            if need_x:
                grad_x_tile = grad_x[sample, :, pixels].view(cin, rows * w)
                torch.mm(flipped_w_mat, gathered_mat, out=grad_x_tile)
            if need_weight:
                x_tile = x[sample, :, pixels].view(cin, rows * w)
                grad_flipped_w.addmm_(gathered_mat, x_tile.T)
            if need_kernel:
                grad_tile = grad_out[sample, :, pixels].view(cout, rows * w)
                torch.mm(w_mat_t, grad_tile, out=mixed.view(cin * k * k, rows * w))
                window = _windows(x_pad, sample, row, rows, k, dilation, w)
                grad_kernel_tile = grad_kernel[sample, :, pixels].view(k, k, rows, w)
                torch.sum(mixed.mul_(window), 0, out=grad_kernel_tile)
        grad_weight = None
        if need_weight:
            flipped = grad_flipped_w.view(cout, k, k, cin)
            grad_weight = flipped.flip(1, 2).permute(0, 3, 1, 2).contiguous()
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
