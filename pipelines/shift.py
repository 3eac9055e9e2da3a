"""Sub-pixel shift between dates: where to measure it, measuring it, and correcting a date by it.

The shift is measured on a bounded sample of one band (:func:`sample_slices` picks it), by masked
cross-correlation refined to sub-pixel by an upsampled DFT (:func:`estimate_shift`), and corrected
block by block, each block read again with a margin of the shift (:func:`shifted_mosaic`), so
that no block waits on its neighbours and a whole tile never sits in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import dask.array as da
import numpy as np
from rasterio.windows import Window
from scipy import ndimage

from pipelines.grid import Grid, lazy_blocks

# The sub-pixel step of the estimate is 1 / UPSAMPLE px, well under the 0.1 px it must reach.
UPSAMPLE = 50
# Width of the taper towards invalid pixels, in pixels.
TAPER_PX = 4


def sample_slices(
    pair_counts: np.ndarray, t: int, reference: int, grid: Grid, chunk_px: int, sample_px: int
) -> tuple[slice, slice]:
    """Where to measure date ``t``'s shift: the whole grid when it fits in ``sample_px``, else
    the square of blocks (at most ``sample_px`` wide, or the corner of one block larger than
    that) with most pixels valid on both dates."""
    if grid.height <= sample_px and grid.width <= sample_px:
        return slice(None), slice(None)
    k = max(1, sample_px // chunk_px)
    counts = pair_counts[:, :, t, reference]
    ky, kx = min(k, counts.shape[0]), min(k, counts.shape[1])
    sums = np.lib.stride_tricks.sliding_window_view(counts, (ky, kx)).sum(axis=(2, 3))
    by, bx = np.unravel_index(np.argmax(sums), sums.shape)
    return (
        slice(by * chunk_px, by * chunk_px + min(ky * chunk_px, sample_px)),
        slice(bx * chunk_px, bx * chunk_px + min(kx * chunk_px, sample_px)),
    )


def _standardised(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Zero mean and unit variance over ``valid`` pixels, 0 elsewhere: blind to gain and offset
    between dates."""
    values = image[valid]
    return np.where(valid, (image - values.mean()) / max(values.std(), 1e-9), 0.0)


def _taper(valid: np.ndarray) -> np.ndarray:
    """Weights that fall smoothly to 0 towards the grid's border (a Hann window) and towards
    invalid pixels: sharp edges shared by both dates would pull the peak towards no shift."""
    window = np.outer(np.hanning(valid.shape[0]), np.hanning(valid.shape[1]))
    inner = ndimage.binary_erosion(valid, iterations=TAPER_PX, border_value=1)
    return window * ndimage.gaussian_filter(inner.astype(np.float64), TAPER_PX / 2)


def _upsampled_dft(spectrum: np.ndarray, size: int, upsample: int, start: np.ndarray) -> np.ndarray:
    """The inverse DFT of ``spectrum`` on a ``size`` x ``size`` patch of a grid ``upsample``
    times finer than the pixel grid, from ``start`` (in fine steps): a matrix product per axis,
    so only the patch around the peak is computed (Guizar-Sicairos et al., 2008)."""
    out = spectrum
    for n, offset in zip(spectrum.shape[::-1], start[::-1], strict=True):
        steps = (np.arange(size) + offset)[:, None]
        kernel = np.exp(2j * np.pi * steps * np.fft.fftfreq(n, upsample)[None, :])
        out = np.tensordot(kernel, out, axes=(1, -1))
    return out


def estimate_shift(
    reference: np.ndarray, moving: np.ndarray, valid: np.ndarray, upsample: int = UPSAMPLE
) -> np.ndarray:
    """Sub-pixel (dy, dx) such that ``moving`` ~ ``reference`` shifted by (dy, dx), to
    1 / ``upsample`` of a pixel.

    Masked cross-correlation in the Fourier domain: both images standardised over ``valid``
    (pixels valid on both dates) and tapered to 0 at the border and at invalid pixels; the
    integer peak of their half-whitened correlation, then the peak of their correlation's
    inverse DFT upsampled around it (a matrix DFT of a 1.5 px neighbourhood: no search, no
    resampling).
    """
    taper = _taper(valid)
    ref = np.fft.fft2(_standardised(reference, valid) * taper)
    mov = np.fft.fft2(_standardised(moving, valid) * taper)
    cross = mov * np.conj(ref)
    # The integer peak from the half-whitened spectrum: sharper than the plain correlation's,
    # which large uniform areas spread, and not drawn to no shift by the taper's leakage into the
    # high frequencies as full whitening (phase correlation) is.
    surface = np.fft.ifft2(cross / np.sqrt(np.abs(cross) + 1e-12)).real
    peak = np.array(np.unravel_index(np.argmax(surface), surface.shape))
    size = np.array(surface.shape)
    integer = np.where(peak > size // 2, peak - size, peak)
    patch = int(np.ceil(1.5 * upsample))
    start = integer * upsample - patch // 2
    # The sub-pixel peak from the plain correlation, not whitened: whitening weighs the high
    # frequencies, where smooth imagery holds little but leakage and resampling error, as much as
    # the texture. Divided by the taper's own correlation (the weight both dates share at each
    # shift), which would otherwise pull the peak towards no shift.
    weight = np.abs(np.fft.fft2(taper)) ** 2
    fine = (
        _upsampled_dft(cross, patch, upsample, start).real
        / _upsampled_dft(weight, patch, upsample, start).real
    )
    offset = np.array(np.unravel_index(np.argmax(fine), fine.shape))
    return (start + offset) / upsample


def apply_shift(
    block: np.ndarray, shift: np.ndarray, trim: tuple[slice, slice] = (slice(None), slice(None))
) -> np.ndarray:
    """Resample a (band + 1, y, x) mosaic block by ``shift`` (bilinear) and keep its ``trim``
    part; reflectance pixels touched by invalid ones become invalid and NaN. Run per block with
    an overlap of at least the shift plus one pixel, it gives what resampling the whole date
    would. One band is resampled at a time, so the block's copies are its output and one plane."""
    still_valid = ndimage.shift(block[-1], shift, order=1, mode="constant", cval=0) > 0.999
    kept = still_valid[trim]
    moved = np.empty((len(block), *kept.shape), dtype=np.float32)
    plane = np.empty(block.shape[1:], dtype=np.float32)
    for band, values in enumerate(block[:-1]):
        filled = np.nan_to_num(values, nan=0.0)
        ndimage.shift(filled, shift, output=plane, order=1, mode="nearest")
        moved[band] = np.where(kept, plane[trim], np.float32(np.nan))
    moved[-1] = kept
    return moved


def _depth(shift: np.ndarray) -> int:
    """The overlap a block needs to be resampled by ``shift`` as the whole date would be."""
    return int(np.ceil(np.abs(shift).max())) + 1


def shifted_block(
    read: Callable[[Window], np.ndarray], grid: Grid, window: Window, shift: np.ndarray
) -> np.ndarray:
    """``window`` of a date moved back by ``shift``: read with a margin of the shift plus one
    pixel (clipped to the grid, as a block at the grid's edge has no neighbour there), resampled,
    and trimmed, so a block needs no other block."""
    depth = _depth(shift)
    row0, col0 = max(0, window.row_off - depth), max(0, window.col_off - depth)
    row1 = min(grid.height, window.row_off + window.height + depth)
    col1 = min(grid.width, window.col_off + window.width + depth)
    top, left = window.row_off - row0, window.col_off - col0
    trim = (slice(top, top + window.height), slice(left, left + window.width))
    return apply_shift(read(Window(col0, row0, col1 - col0, row1 - row0)), -shift, trim)


def shifted_mosaic(
    read: Callable[[Window], np.ndarray], planes: int, grid: Grid, chunk_px: int, shift: np.ndarray
) -> da.Array:
    """A date's lazy mosaic (``planes``, y, x) moved back by ``shift``, from ``read`` (a grid
    window to its (band + 1, y, x) mosaic), one independent task per block: the same values as
    resampling the whole date, without holding neighbours' blocks."""
    moved = partial(shifted_block, read, grid, shift=shift)  # moved(window)
    return lazy_blocks(moved, grid, chunk_px, (planes,), np.float32)
