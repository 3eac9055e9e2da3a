"""Change screening: which windows of a region stayed unchanged across every pair of dates.

Three pixel scores, each computed on the pixels valid at both dates only:

- ``cva`` (default), a normalised change vector: each date's bands are standardised with robust
  statistics (median and inter-quartile range over the pixels valid at both dates), which cancels
  per-band gain and offset (illumination, haze, much of a season's drift); the score is the RMS
  difference of the vectors standardised by IQR: the CVA distance of
  :mod:`matter_model.change_detection`, in units of one IQR per band.
- ``sam``, the spectral angle between the two dates' band vectors (radians): blind to any common
  gain of all bands (illumination), but not to a per-band offset.
- ``rrn``, relative radiometric normalisation: date b fitted to date a band by band on
  pseudo-invariant pixels, the residual in units of their noise (robust sigmas).

Each is smoothed over 3 x 3 valid pixels. A window's statistic is a quantile of its smoothed
scores (``quantile=1.0``, the default, is the maximum, because a window with a small changed
corner is still changed); a window is changed when that statistic exceeds the threshold for any
pair of dates. ``benchmarks/change_screen.py`` measures the scores on the demo world's planted
changes and on the labelled OSCD cities: no threshold of any of them keeps 99 % truly unchanged
OSCD windows at a useful recall (see its JSON and the README).

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

from matter_model.change_detection import feature_distance
from matter_model.inputs import IQR_TO_STD, standardise
from pipelines.blocks import as_blocks
from pipelines.stack_store import stack_grid

# The smallest IQR a band is divided by, so that a flat band's differences stay finite.
_MIN_IQR = 1e-4


def robust_cva(image_a: np.ndarray, image_b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """RMS difference per pixel (y, x) of the two dates' bands, each standardised by its median
    and IQR over ``valid`` pixels: the CVA distance, in IQR units per band."""
    standardised = (
        standardise(image, valid=valid, min_scale=_MIN_IQR / IQR_TO_STD)
        for image in (image_a, image_b)
    )
    # The CVA distance divides by IQR / 1.349 and sums over bands: the RMS of differences in IQR
    # units is that distance / (1.349 * sqrt(bands)), which keeps the screen's thresholds.
    return feature_distance(*standardised) / (IQR_TO_STD * np.sqrt(image_a.shape[0]))


def spectral_angle(image_a: np.ndarray, image_b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Angle in radians between the two dates' band vectors per pixel (y, x)."""
    a, b = np.nan_to_num(image_a), np.nan_to_num(image_b)
    norms = np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)
    cosine = np.sum(a * b, axis=0) / np.maximum(norms, 1e-12)
    return np.where(valid, np.arccos(np.clip(cosine, -1.0, 1.0)), 0.0).astype(np.float32)


def normalised_residual(
    image_a: np.ndarray, image_b: np.ndarray, valid: np.ndarray, clip_sigma: float = 2.5
) -> np.ndarray:
    """RMS over bands of date b's residual after relative radiometric normalisation onto date a.

    Per band, ``b = gain * a + offset`` is fitted by least squares on pseudo-invariant pixels
    (three rounds, each keeping the valid pixels within ``clip_sigma`` robust sigmas of the last
    fit); the residual is expressed in units of the invariant pixels' robust sigma (1.4826 MAD),
    so the score reads as noise sigmas whatever the scene's contrast.
    """
    residual = np.empty(image_a.shape, dtype=np.float32)
    for i, (a_band, b_band) in enumerate(zip(image_a, image_b, strict=True)):
        x, y = a_band[valid].astype(np.float64), b_band[valid].astype(np.float64)
        invariant = np.ones(x.shape, dtype=bool)
        for _ in range(3):
            gain, offset = np.polyfit(x[invariant], y[invariant], 1)
            r = y - gain * x - offset
            centre = np.median(r[invariant])
            sigma = max(1.4826 * np.median(np.abs(r[invariant] - centre)), 1e-6)
            invariant = np.abs(r - centre) < clip_sigma * sigma
        residual[i] = (
            np.nan_to_num(b_band) - gain * np.nan_to_num(a_band) - offset - centre
        ) / sigma
    return np.sqrt(np.mean(np.square(residual), axis=0))


PIXEL_SCORES = {"cva": robust_cva, "sam": spectral_angle, "rrn": normalised_residual}


def pixel_change_score(
    image_a: np.ndarray, image_b: np.ndarray, valid: np.ndarray, method: str = "cva"
) -> np.ndarray:
    """Smoothed change score per pixel by ``method`` (a key of PIXEL_SCORES), NaN outside
    ``valid``."""
    if method not in PIXEL_SCORES:
        raise ValueError(f"unknown change score {method!r}; choose one of {sorted(PIXEL_SCORES)}")
    if valid.sum() < 16:
        return np.full(valid.shape, np.nan, dtype=np.float32)
    magnitude = np.where(valid, PIXEL_SCORES[method](image_a, image_b, valid), 0.0)
    weight = ndimage.uniform_filter(valid.astype(np.float32), size=3)
    smoothed = ndimage.uniform_filter(magnitude, size=3) / np.maximum(weight, 1e-6)
    return np.where(valid, smoothed, np.nan).astype(np.float32)


def _blocks(score: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping ``size`` x ``size`` windows as (rows, cols, size * size)."""
    blocks = as_blocks(score, size)
    return blocks.reshape(*blocks.shape[:2], size * size)


def window_max(score: np.ndarray, size: int) -> np.ndarray:
    """Largest finite score in each non-overlapping ``size`` x ``size`` window (-inf if none)."""
    blocks = _blocks(score, size)
    return np.max(np.where(np.isnan(blocks), -np.inf, blocks), axis=2)


def window_statistic(score: np.ndarray, size: int, quantile: float = 1.0) -> np.ndarray:
    """The ``quantile`` of the finite scores of each window (1.0: the maximum; -inf if none)."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if quantile == 1.0:
        return window_max(score, size)
    blocks = _blocks(score, size)
    empty = np.isnan(blocks).all(axis=2)
    blocks[empty] = 0.0
    return np.where(empty, -np.inf, np.nanquantile(blocks, quantile, axis=2)).astype(np.float32)


def window_scores(
    reflectance: np.ndarray,
    valid: np.ndarray,
    window: int = 32,
    method: str = "cva",
    quantile: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per window (rows, cols): the change statistic, max over every pair of dates, and the
    smallest valid fraction over dates. ``reflectance`` is (time, band, y, x), ``valid``
    (time, y, x)."""
    times = reflectance.shape[0]
    rows, cols = valid.shape[1] // window, valid.shape[2] // window
    if rows == 0 or cols == 0:
        raise ValueError(
            f"the stack ({valid.shape[1]} x {valid.shape[2]} px) is smaller than one "
            f"{window} px window; enlarge the region or use a smaller window"
        )
    score = np.full((rows, cols), -np.inf, dtype=np.float32)
    for a, b in combinations(range(times), 2):
        pair_valid = valid[a] & valid[b]
        pair_score = pixel_change_score(reflectance[a], reflectance[b], pair_valid, method)
        score = np.maximum(score, window_statistic(pair_score, window, quantile))
    valid_fraction = as_blocks(valid, window).mean(axis=(-2, -1))
    return score, valid_fraction.min(axis=0)


def screen_windows(
    stack: xr.Dataset,
    window: int = 32,
    threshold: float = 1.2,
    min_valid_fraction: float = 0.9,
    method: str = "cva",
    quantile: float = 1.0,
) -> pd.DataFrame:
    """Score every window of a co-registered stack and mark the unchanged ones.

    A window counts as unchanged when its score (``method``, window ``quantile``) stays under
    ``threshold`` for every pair of dates and at least ``min_valid_fraction`` of its pixels are
    valid at every date.
    """
    score, min_valid = window_scores(
        stack["reflectance"].values, stack["valid"].values, window, method, quantile
    )
    rows, cols = score.shape
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
    return as_blocks(change, window).any(axis=(-2, -1)).ravel()


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


def threshold_for_precision(score: np.ndarray, truly_changed: np.ndarray, target: float) -> float:
    """The loosest threshold whose kept windows (``score < threshold``) reach ``target``
    precision against ``truly_changed``; where none does, the one keeping only the lowest score.

    Calibrate it on scenes other than those it is reported on (leave one scene out).
    """
    finite = np.isfinite(score)
    order = np.argsort(score[finite], kind="stable")
    ranked = score[finite][order]
    if not len(ranked):
        raise ValueError("no window has a finite score to calibrate a threshold on")
    precision = np.cumsum(~truly_changed[finite][order]) / np.arange(1, len(ranked) + 1)
    # A threshold keeps every window of one score or none: judge it at the last of each tie.
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
    reached = np.flatnonzero((precision >= target) & last_of_tie)
    return float(np.nextafter(ranked[reached.max() if len(reached) else 0], np.inf))
