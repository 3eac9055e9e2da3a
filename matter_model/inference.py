"""Tiled inference: a model's dense features over an image of any size, in memory bounded by a
tile, not by the image.

The image is cut into core tiles of ``tile`` px, which the model sees with ``overlap`` px of
context on every side (clipped at the image border). Neighbouring tiles are blended over a band
of ``overlap`` px centred on their shared edge, by weights that ramp from 1 to 0 (``linear`` or
``cosine``) and sum to 1 everywhere, so seams vanish. The outer half of the context is never
weighted: when it covers the model's receptive field, the tiled result is the whole-image one.

Tiles run one at a time in raster order, and each pixel goes to ``write`` as soon as every tile
weighting it has run: besides one tile, only a band of ``overlap`` rows across the image is
held. :func:`embed_dates` runs a MATTER model so over every date of a co-registered stack,
preparing each date as evaluation does (``matter_model.inputs.input_preparation``), and
:func:`change_score` / :func:`change_mask` turn two dates' features into a change map as
:func:`matter_model.change_detection.detect_changes` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from matter_model.change_detection import (
    CHANGE_MAP_OUTPUT,
    DEFAULT_BINS,
    DEFAULT_SIGMA,
    feature_distance,
    model_features,
    otsu_threshold,
)
from matter_model.inputs import (
    Preparation,
    as_reflectance,
    band_statistics,
    input_preparation,
    standardise,
)

logger = logging.getLogger(__name__)

Reader = Callable[[slice, slice], np.ndarray]  # (rows, cols) -> (..., h, w)
Runner = Callable[[np.ndarray], np.ndarray]  # (..., h, w) -> (..., h, w), the same h and w
Writer = Callable[[slice, slice, np.ndarray], None]  # (rows, cols, block (..., h, w))

RAMPS = ("cosine", "linear")
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64


class ArrayLike(Protocol):
    """What the stacks are read through: numpy, dask or zarr arrays (indexed, then asarray)."""

    shape: tuple[int, ...]

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True)
class Span:
    """One tile along an axis: the ``window`` the model sees, the ``support`` its output is
    weighted on (``weights``, one per pixel of the support) and the pixels it finishes,
    ``[support[0], done)``, which no later tile weights."""

    window: tuple[int, int]
    support: tuple[int, int]
    done: int
    weights: np.ndarray


def _rise(width: int, ramp: str) -> np.ndarray:
    """Weights rising from near 0 to near 1 over ``width`` px (the falling side is 1 minus)."""
    t = (np.arange(width) + 0.5) / width
    return t if ramp == "linear" else 0.5 - 0.5 * np.cos(np.pi * t)


def spans(size: int, tile: int, overlap: int, ramp: str = "cosine") -> list[Span]:
    """The tiles along an axis of ``size`` px; their weights sum to 1 at every pixel."""
    if ramp not in RAMPS:
        raise ValueError(f"unknown blending ramp {ramp!r}; choose one of {list(RAMPS)}")
    if tile < 1 or overlap < 0 or overlap > tile:
        raise ValueError(f"need 1 <= tile and 0 <= overlap <= tile, got {tile=} {overlap=}")
    half = overlap // 2
    rise = _rise(2 * half, ramp)
    starts = list(range(0, size, tile))
    out = []
    for k, a in enumerate(starts):
        b = min(a + tile, size)
        last = k == len(starts) - 1
        lo, hi = max(a - half, 0), (size if last else min(b + half, size))
        weights = np.ones(hi - lo)
        if k > 0:  # rising over [a - half, a + half), from the previous tile
            n = min(2 * half, hi - lo)
            weights[:n] = rise[:n]
        if not last:  # falling over [b - half, b + half), to the next tile
            start = b - half - lo
            weights[start:] *= 1 - rise[: hi - lo - start]
        window = (max(a - overlap, 0), min(b + overlap, size))
        out.append(Span(window, (lo, hi), size if last else b - half, weights))
    return out


def tiled_inference(
    run: Runner,
    read: Reader,
    height: int,
    width: int,
    write: Writer,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    ramp: str = "cosine",
) -> None:
    """``run`` over the image ``read`` gives, tile by tile, blended; every pixel is written once.

    ``read(rows, cols)`` returns the image there as ``(..., h, w)``; ``run`` maps it to
    ``(..., h, w)`` outputs of the same size; ``write(rows, cols, block)`` receives disjoint
    float32 blocks in raster order that cover the image.
    """
    rows, cols = spans(height, tile, overlap, ramp), spans(width, tile, overlap, ramp)
    below: np.ndarray | None = None  # the unfinished rows under the last row of tiles
    for row in rows:
        right: np.ndarray | None = None  # the unfinished columns right of the last tile
        below_next: np.ndarray | None = None
        for col in cols:
            (wy0, wy1), (wx0, wx1) = row.window, col.window
            (sy0, sy1), (sx0, sx1) = row.support, col.support
            out = np.asarray(run(read(slice(wy0, wy1), slice(wx0, wx1))), dtype=np.float32)
            out = out[..., sy0 - wy0 : sy1 - wy0, sx0 - wx0 : sx1 - wx0]
            out = out * (row.weights[:, None] * col.weights[None, :]).astype(np.float32)
            if right is not None:  # includes what ``below`` held for those columns
                out[..., : right.shape[-1]] += right
                fresh = sx0 + right.shape[-1]
            else:
                fresh = sx0
            if below is not None:
                out[..., : below.shape[-2], fresh - sx0 :] += below[..., fresh:sx1]
            if below_next is None:
                below_next = np.zeros((*out.shape[:-2], sy1 - row.done, width), np.float32)
            write(
                slice(sy0, row.done),
                slice(sx0, col.done),
                out[..., : row.done - sy0, : col.done - sx0],
            )
            below_next[..., sx0 : col.done] = out[..., row.done - sy0 :, : col.done - sx0]
            right = out[..., col.done - sx0 :]
        below = below_next


def tiled_apply(
    image: np.ndarray,
    run: Runner,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    ramp: str = "cosine",
) -> np.ndarray:
    """:func:`tiled_inference` of an in-memory image ``(..., H, W)``, gathered in one array."""
    out: np.ndarray | None = None

    def write(rows: slice, cols: slice, block: np.ndarray) -> None:
        nonlocal out
        if out is None:
            out = np.empty((*block.shape[:-2], *image.shape[-2:]), np.float32)
        out[..., rows, cols] = block

    h, w = image.shape[-2:]
    tiled_inference(run, lambda r, c: image[..., r, c], h, w, write, tile, overlap, ramp)
    assert out is not None
    return out


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_runner(
    model: Any, window: int, output: str = CHANGE_MAP_OUTPUT, device: str = "cpu"
) -> Runner:
    """A :data:`Runner` of prepared images ``(..., C, h, w) -> (..., E, h, w)``: the model's
    ``output`` (:func:`matter_model.change_detection.model_features`, in one pass per image)."""
    extract = model_features(
        model, window=window, device=device, tile=1 << 30, prepare=as_reflectance, output=output
    )

    def run(images: np.ndarray) -> np.ndarray:
        flat = images.reshape(-1, *images.shape[-3:])
        out = np.stack([extract(image) for image in flat])
        return out.reshape(*images.shape[:-3], *out.shape[-3:])

    return run


def fill_from_nearest_date(images: ArrayLike, valid: np.ndarray, date: int) -> np.ndarray:
    """Date ``date`` ``(C, h, w)`` of ``images`` ``(T, C, h, w)``, its invalid pixels taken from
    the nearest date in time valid there (the earlier one on a tie), else 0: as evaluation fills
    a pair, so that a cloud cannot look like change to a window-based feature (the model never
    saw a NaN). Another date is read only when it fills a hole."""
    filled = np.where(valid[date], np.asarray(images[date], dtype=np.float32), np.nan)
    hole = ~valid[date]
    for other in sorted(range(len(valid)), key=lambda s: (abs(s - date), s)):
        take = hole & valid[other]
        if other == date or not take.any():
            continue
        filled[:, take] = np.asarray(images[other], dtype=np.float32)[:, take]
        hole &= ~take
        if not hole.any():
            break
    return np.nan_to_num(filled, nan=0.0)


def date_preparation(prepare: Preparation, reflectance: ArrayLike, valid: ArrayLike) -> Preparation:
    """``prepare`` of one date ``(C, H, W)``, computed once over the whole date and applied
    per tile: the identity for reflectance, and for scene standardisation each band's centre
    and scale over the date's valid pixels, read one band at a time."""
    if prepare is as_reflectance:
        return as_reflectance
    if prepare is not standardise:
        raise ValueError(f"{prepare!r} cannot be applied tile by tile; add it to date_preparation")
    mask = np.asarray(valid, dtype=bool)
    stats = [
        band_statistics(np.where(mask, np.asarray(reflectance[c], np.float32), np.nan))
        for c in range(reflectance.shape[0])
    ]
    centre = np.array([c for c, _ in stats], np.float64)[:, None, None]
    scale = np.array([s for _, s in stats], np.float64)[:, None, None]
    return lambda tile: ((tile - centre) / scale).astype(np.float32)


def embed_dates(
    model: Any,
    config: Mapping[str, Any],
    reflectance: ArrayLike,
    valid: ArrayLike,
    write: Callable[[int, slice, slice, np.ndarray], None],
    window: int,
    output: str = CHANGE_MAP_OUTPUT,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    ramp: str = "cosine",
    device: str | None = None,
) -> None:
    """Every date's dense ``output`` features, tile by tile: ``write(date, rows, cols, block)``
    with blocks ``(E, h, w)``, one date after the other (the memory held is that of one date).

    ``reflectance`` ``(T, C, H, W)`` holds the model's bands (``config['bands']``) in order and
    ``valid`` ``(T, H, W)`` the valid mask; both are read one tile plus context at a time.
    Invalid pixels are filled from the nearest valid date, then each date is prepared as the
    model's training patches were (``config['normalisation']``).
    """
    device = device or default_device()
    dates, bands, height, width = reflectance.shape
    if bands != len(config["bands"]):
        raise ValueError(f"the stack has {bands} bands, the model expects {list(config['bands'])}")
    preparation = input_preparation(config)
    run = model_runner(model, window, output, device)
    logger.info("%d dates of %d x %d px on %s, tiles of %d px", dates, height, width, device, tile)
    for date in range(dates):
        prepare = date_preparation(preparation, reflectance[date], valid[date])

        def read(
            rows: slice, cols: slice, date: int = date, prepare: Preparation = prepare
        ) -> np.ndarray:
            mask = np.asarray(valid[:, rows, cols], dtype=bool)
            return prepare(fill_from_nearest_date(reflectance[:, :, rows, cols], mask, date))

        def write_date(rows: slice, cols: slice, block: np.ndarray, date: int = date) -> None:
            write(date, rows, cols, block)

        tiled_inference(run, read, height, width, write_date, tile, overlap, ramp)


def change_score(
    features_1: ArrayLike, features_2: ArrayLike, sigma: float = DEFAULT_SIGMA, block: int = 1024
) -> np.ndarray:
    """The change score ``(H, W)`` of two dates' features ``(E, H, W)``: their L2 distance, read
    ``block`` rows at a time, smoothed by a Gaussian of ``sigma`` px as ``detect_changes`` does."""
    height, width = features_1.shape[-2:]
    distance = np.empty((height, width), np.float32)  # filled and smoothed in place
    for y in range(0, height, block):
        distance[y : y + block] = feature_distance(
            np.asarray(features_1[:, y : y + block], np.float32),
            np.asarray(features_2[:, y : y + block], np.float32),
        )
    if sigma > 0:
        ndimage.gaussian_filter(distance, sigma=sigma, mode="reflect", output=distance)
    return distance


def change_mask(
    score: np.ndarray,
    valid: np.ndarray,
    threshold: float | None = None,
    bins: int = DEFAULT_BINS,
) -> tuple[np.ndarray, float]:
    """Change = score above ``threshold`` (Otsu's over the valid pixels when None), on valid
    pixels only; returns the mask and the threshold used (NaN for Otsu's when no pixel is
    valid, as under a cloud that covers the pair: then nothing is changed)."""
    valid = valid & np.isfinite(score)
    if threshold is None:
        if not valid.any():
            return np.zeros_like(valid), float("nan")
        threshold = otsu_threshold(score[valid], bins=bins)
    return (score > threshold) & valid, float(threshold)


def consecutive_pairs(dates: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs of consecutive dates: (0, 1), (1, 2), ..."""
    return [(t, t + 1) for t in range(len(dates) - 1)]
