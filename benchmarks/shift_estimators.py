"""Old against new shift estimator on the same samples, taking turns: error and time of each.

The old one (:func:`powell_estimate_shift`, kept here to compare with) is the one
:func:`pipelines.shift.estimate_shift` replaced: phase correlation for the integer peak, then a
Powell search of the sub-pixel shift maximising the correlation of the standardised images
resampled by cubic splines, every step resampling the whole sample.

Samples: the co-registration benchmark's own shift samples (B08 and the valid mask of each date
against the first, as :func:`pipelines.coregistration.measure_shifts` reads them, planted shifts
known), and the real 29RKH files at their stored 100 m in the tile's cloudy corner, read twice by
a GDAL warp, once onto a grid offset by a planted shift, clouds of the SCL masked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize

# Planted (dy, dx) shifts of the 100 m samples, in pixels.
PLANTED_100M = [(0.3, -0.7), (1.25, 0.4), (-0.55, 0.15), (0.45, 0.55), (-0.2, -1.1)]


def powell_estimate_shift(
    reference: np.ndarray, moving: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """Sub-pixel (dy, dx) such that ``moving`` ~ ``reference`` shifted by (dy, dx)."""

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


def _warped(path: Path, transform, size: int, nearest: bool = False) -> np.ndarray:
    """A raster warped by GDAL onto a ``size`` square grid of ``transform``."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    resampling = Resampling.nearest if nearest else Resampling.bilinear
    with (
        rasterio.open(path) as src,
        WarpedVRT(
            src, crs=src.crs, transform=transform, width=size, height=size, resampling=resampling
        ) as vrt,
    ):
        return vrt.read(1).astype(np.float64)


def real_tile_samples(folder: Path, size: int = 400) -> Iterator[tuple[str, tuple, np.ndarray]]:
    """(name, (reference, moving, valid), planted shift) of B08 and B04 at 100 m in the tile's
    cloudy upper-right corner, the moving grid offset by each planted shift."""
    from affine import Affine

    from pipelines.bands import SCL_INVALID_DEFAULT

    origin = Affine(100.0, 0, 269780, 0, -100.0, 2800020)
    scl = _warped(folder / "SCL.tif", origin, size, nearest=True)
    for band in ("B08", "B04"):
        reference = _warped(folder / f"{band}.tif", origin, size)
        for dy, dx in PLANTED_100M:
            moving = _warped(folder / f"{band}.tif", origin * Affine.translation(-dx, -dy), size)
            valid = (reference > 0) & (moving > 0) & ~np.isin(scl, SCL_INVALID_DEFAULT)
            yield f"100 m {band} {dy:+.2f},{dx:+.2f}", (reference, moving, valid), (dy, dx)


def compare(
    samples: Iterator[tuple[str, tuple, tuple]],
    estimators: dict[str, Callable[..., np.ndarray]],
) -> dict:
    """Each estimator on each sample, taking turns: per sample the error (px, the larger axis)
    and seconds of each; per estimator the largest and mean error and the total seconds."""
    rows = []
    for name, images, planted in samples:
        row: dict = {"sample": name, "planted": [round(float(v), 3) for v in planted]}
        for label, estimate in estimators.items():
            start = time.perf_counter()
            shift = estimate(*images)
            row[f"{label}_s"] = round(time.perf_counter() - start, 3)
            row[f"{label}_error_px"] = round(float(np.abs(shift - np.asarray(planted)).max()), 4)
        rows.append(row)
    summary = {
        label: {
            "max_error_px": max(r[f"{label}_error_px"] for r in rows),
            "mean_error_px": round(float(np.mean([r[f"{label}_error_px"] for r in rows])), 4),
            "total_s": round(sum(r[f"{label}_s"] for r in rows), 2),
        }
        for label in estimators
    }
    return {"summary": summary, "samples": rows}
