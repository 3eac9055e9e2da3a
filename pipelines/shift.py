"""Sub-pixel shift between dates: where to measure it, measuring it, and correcting a date by it.

The shift is measured on a bounded sample of one band (:func:`sample_slices` picks it), by phase
correlation refined to sub-pixel by spline resampling (:func:`estimate_shift`), and corrected
block by block with an overlap (:func:`shift_mosaic`), so a whole tile never sits in memory.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from scipy import ndimage, optimize

from pipelines.grid import Grid


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


def estimate_shift(reference: np.ndarray, moving: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Sub-pixel (dy, dx) such that ``moving`` ~ ``reference`` shifted by (dy, dx).

    The integer part comes from the phase-correlation peak (invalid pixels set to the valid mean,
    a Hann window against border effects); the sub-pixel part from maximising the correlation of
    the standardised images over pixels valid in both, with cubic-spline resampling. Standardising
    makes the estimate blind to gain and offset between dates.
    """

    def standardised(image: np.ndarray) -> np.ndarray:
        values = image[valid]
        return np.where(valid, (image - values.mean()) / max(values.std(), 1e-9), 0.0)

    ref, mov = standardised(reference), standardised(moving)
    window = np.outer(np.hanning(ref.shape[0]), np.hanning(ref.shape[1]))
    cross = np.fft.fft2(mov * window) * np.conj(np.fft.fft2(ref * window))
    surface = np.fft.ifft2(cross / (np.abs(cross) + 1e-12)).real
    peak = np.array(np.unravel_index(np.argmax(surface), surface.shape))
    size = np.array(surface.shape)
    integer = np.where(peak > size // 2, peak - size, peak).astype(np.float64)

    margin = int(np.ceil(np.abs(integer).max())) + 3
    inner = (slice(margin, -margin), slice(margin, -margin))
    # Compare only pixels away from any invalid area: both images are zero there, and a mask
    # edge that stays put in both would pull the estimate towards no shift at all.
    inner_valid = ndimage.binary_erosion(valid, iterations=margin, border_value=1)[inner]

    def misfit(shift: np.ndarray) -> float:
        back = ndimage.shift(mov, -shift, order=3, mode="nearest")[inner]
        return -float(np.mean(back[inner_valid] * ref[inner][inner_valid]))

    result = optimize.minimize(
        misfit,
        integer,
        method="Powell",
        bounds=[(v - 1.5, v + 1.5) for v in integer],
        options={"xtol": 1e-3, "ftol": 1e-7},
    )
    return np.asarray(result.x)


def apply_shift(block: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Resample a (band + 1, y, x) mosaic block by ``shift`` (bilinear); reflectance pixels
    touched by invalid ones become invalid and NaN. Run per block with an overlap of at least
    the shift plus one pixel, it gives what resampling the whole date would."""
    filled = np.nan_to_num(block[:-1], nan=0.0)
    moved = np.stack([ndimage.shift(b, shift, order=1, mode="nearest") for b in filled])
    moved_valid = ndimage.shift(block[-1], shift, order=1, mode="constant", cval=0)
    still_valid = moved_valid > 0.999
    moved[:, ~still_valid] = np.nan
    return np.concatenate([moved, still_valid[None]]).astype(np.float32)


def shift_mosaic(mosaic: da.Array, shift: np.ndarray) -> da.Array:
    """A date's lazy mosaic (band + 1, y, x) moved back by its measured ``shift``, block by block
    with an overlap of the shift plus one pixel."""
    depth = int(np.ceil(np.abs(shift).max())) + 1
    return mosaic.map_overlap(
        apply_shift,
        depth={0: 0, 1: depth, 2: depth},
        boundary="none",
        dtype=np.float32,
        shift=-shift,
    )
