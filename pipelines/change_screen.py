"""Change screening: which windows of a region stayed unchanged across every pair of dates.

The pixel score is a normalised change vector: each date's bands are standardised with robust
statistics (median and inter-quartile range over the pixels valid at both dates), which cancels
per-band gain and offset (illumination, haze); the score is the RMS difference of the
standardised vectors, smoothed over 3 x 3 pixels. A window is changed when its largest smoothed
score over valid pixels exceeds the threshold for any pair of dates: the maximum, not the mean,
because a window with a small changed corner is still changed.

Output contract: a DataFrame, one row per window, with ``row``, ``col`` (window index), ``y0``,
``x0`` (pixel offset), ``size``, ``min_valid_fraction`` (over dates), ``score`` (max over pairs),
``unchanged`` (bool) and the window's bounds in the stack's CRS (``minx``..``maxy``).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from pipelines.coregistration import stack_grid


def _standardised(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per band (x - median) / IQR over ``valid`` pixels; (band, y, x) float32."""
    pixels = image[:, valid]
    q25, median, q75 = np.percentile(pixels, [25, 50, 75], axis=1)
    scale = np.maximum(q75 - q25, 1e-4)
    return ((image - median[:, None, None]) / scale[:, None, None]).astype(np.float32)


def pixel_change_score(image_a: np.ndarray, image_b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Smoothed normalised change magnitude per pixel, NaN outside ``valid``."""
    if valid.sum() < 16:
        return np.full(valid.shape, np.nan, dtype=np.float32)
    diff = _standardised(image_a, valid) - _standardised(image_b, valid)
    magnitude = np.sqrt(np.mean(np.square(np.nan_to_num(diff)), axis=0))
    magnitude = np.where(valid, magnitude, 0.0)
    weight = ndimage.uniform_filter(valid.astype(np.float32), size=3)
    smoothed = ndimage.uniform_filter(magnitude, size=3) / np.maximum(weight, 1e-6)
    return np.where(valid, smoothed, np.nan).astype(np.float32)


def window_max(score: np.ndarray, size: int) -> np.ndarray:
    """Largest finite score in each non-overlapping ``size`` x ``size`` window (-inf if none)."""
    rows, cols = score.shape[0] // size, score.shape[1] // size
    blocks = score[: rows * size, : cols * size].reshape(rows, size, cols, size)
    return np.nanmax(np.where(np.isnan(blocks), -np.inf, blocks), axis=(1, 3))


def screen_windows(
    stack: xr.Dataset,
    window: int = 32,
    threshold: float = 1.2,
    min_valid_fraction: float = 0.9,
) -> pd.DataFrame:
    """Score every window of a co-registered stack and mark the unchanged ones.

    A window counts as unchanged when its score stays under ``threshold`` for every pair of dates
    and at least ``min_valid_fraction`` of its pixels are valid at every date.
    """
    reflectance = stack["reflectance"].values
    valid = stack["valid"].values
    times = reflectance.shape[0]
    rows, cols = valid.shape[1] // window, valid.shape[2] // window
    if rows == 0 or cols == 0:
        raise ValueError(
            f"the stack ({valid.shape[1]} x {valid.shape[2]} px) is smaller than one "
            f"{window} px window; enlarge the region or use a smaller window"
        )
    score = np.full((rows, cols), -np.inf, dtype=np.float32)
    for a, b in combinations(range(times), 2):
        pair_score = pixel_change_score(reflectance[a], reflectance[b], valid[a] & valid[b])
        score = np.maximum(score, window_max(pair_score, window))
    cropped = valid[:, : rows * window, : cols * window]
    valid_fraction = cropped.reshape(times, rows, window, cols, window).mean(axis=(2, 4))
    min_valid = valid_fraction.min(axis=0)

    grid = stack_grid(stack)
    row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    y0, x0 = row * window, col * window
    res = grid.transform.a
    minx = grid.transform.c + x0 * res
    maxy = grid.transform.f - y0 * res
    table = pd.DataFrame(
        {
            "row": row.ravel(),
            "col": col.ravel(),
            "y0": y0.ravel(),
            "x0": x0.ravel(),
            "size": window,
            "min_valid_fraction": min_valid.ravel(),
            "score": score.ravel(),
            "minx": minx.ravel(),
            "miny": (maxy - window * res).ravel(),
            "maxx": (minx + window * res).ravel(),
            "maxy": maxy.ravel(),
        }
    )
    table["unchanged"] = (
        (table["score"] < threshold)
        & (table["min_valid_fraction"] >= min_valid_fraction)
        & np.isfinite(table["score"])
    )
    return table


def window_truth(change: np.ndarray, window: int) -> np.ndarray:
    """Per window: does any pixel of a ground-truth change mask (y, x) say change?"""
    rows, cols = change.shape[0] // window, change.shape[1] // window
    blocks = change[: rows * window, : cols * window].reshape(rows, window, cols, window)
    return blocks.any(axis=(1, 3)).ravel()


def screening_quality(table: pd.DataFrame, truly_changed: np.ndarray) -> dict[str, float]:
    """How trustworthy the kept windows are against a ground truth of changed windows.

    ``kept_precision``: the share of windows kept as unchanged that truly are (target >= 0.99);
    ``unchanged_recall``: the share of truly unchanged windows that were kept.
    """
    kept = table["unchanged"].to_numpy()
    truly_unchanged = ~truly_changed
    return {
        "kept": int(kept.sum()),
        "kept_precision": float((kept & truly_unchanged).sum() / max(kept.sum(), 1)),
        "unchanged_recall": float((kept & truly_unchanged).sum() / max(truly_unchanged.sum(), 1)),
    }
