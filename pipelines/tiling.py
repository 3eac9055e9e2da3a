"""Triplet tiling: anchor / positive / negative crops from the unchanged windows of a stack.

- anchor: unchanged window w at date t_i;
- positive: the same window w at another date t_j (every ordered pair of dates where both are
  valid enough);
- negative: another unchanged window of the same scene at date t_i, at least
  ``min_negative_distance_px`` away (centre to centre), drawn with a seeded generator.

Invalid pixels left inside a kept crop are filled with the crop's per-band median, and the
crop's valid fraction is recorded, so the store holds no NaN. Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import pandas as pd
import xarray as xr

from pipelines.coregistration import stack_grid

PATCH_COLUMNS = [
    "region",
    "tile",
    "anchor_date",
    "positive_date",
    "negative_date",
    "window_row",
    "window_col",
    "negative_row",
    "negative_col",
    "minx",
    "miny",
    "maxx",
    "maxy",
    "crs",
    "transform",
    "anchor_valid_fraction",
    "positive_valid_fraction",
]


@dataclass(frozen=True)
class Triplets:
    """Crops (N, C, S, S) float32 and their patch table (N rows)."""

    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    patches: pd.DataFrame


def _crop(reflectance: np.ndarray, valid: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    crop = reflectance[:, y0 : y0 + size, x0 : x0 + size].copy()
    mask = valid[y0 : y0 + size, x0 : x0 + size]
    if not mask.all():
        fill = np.nanmedian(np.where(mask, crop, np.nan), axis=(1, 2))
        crop[:, ~mask] = np.nan_to_num(fill, nan=0.0)[:, None].repeat((~mask).sum(), axis=1)
    return crop


def cut_triplets(
    stack: xr.Dataset,
    screen: pd.DataFrame,
    bands: list[str],
    seed: int = 0,
    min_valid_fraction: float = 0.9,
    min_negative_distance_px: int = 64,
    max_pairs_per_window: int | None = None,
) -> Triplets:
    """Cut every triplet the unchanged windows of ``screen`` allow (see the module docstring)."""
    missing = [b for b in bands if b not in stack["band"].values]
    if missing:
        raise ValueError(f"the stack has no band(s) {missing}; it holds {list(stack.band.values)}")
    reflectance = stack["reflectance"].sel(band=bands).values
    valid = stack["valid"].values
    dates = [str(t)[:10] for t in stack["time"].values.astype("datetime64[D]")]
    size = int(screen["size"].iloc[0]) if len(screen) else 0
    kept = screen[screen["unchanged"]].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    grid = stack_grid(stack)
    centres = kept[["y0", "x0"]].to_numpy(dtype=np.float64) + size / 2

    anchors, positives, negatives, rows = [], [], [], []
    for w, window in kept.iterrows():
        y0, x0 = int(window["y0"]), int(window["x0"])
        far = np.flatnonzero(np.hypot(*(centres - centres[w]).T) >= min_negative_distance_px)
        if far.size == 0:
            continue
        window_valid = valid[:, y0 : y0 + size, x0 : x0 + size].mean(axis=(1, 2))
        pairs = [
            (i, j)
            for i, j in permutations(range(len(dates)), 2)
            if window_valid[i] >= min_valid_fraction and window_valid[j] >= min_valid_fraction
        ]
        if max_pairs_per_window is not None and len(pairs) > max_pairs_per_window:
            pairs = [
                pairs[k]
                for k in sorted(rng.choice(len(pairs), max_pairs_per_window, replace=False))
            ]
        for i, j in pairs:
            n = kept.iloc[int(rng.choice(far))]
            ny0, nx0 = int(n["y0"]), int(n["x0"])
            anchors.append(_crop(reflectance[i], valid[i], y0, x0, size))
            positives.append(_crop(reflectance[j], valid[j], y0, x0, size))
            negatives.append(_crop(reflectance[i], valid[i], ny0, nx0, size))
            rows.append(
                {
                    "region": stack.attrs["region"],
                    "tile": stack.attrs.get("tiles", ""),
                    "anchor_date": dates[i],
                    "positive_date": dates[j],
                    "negative_date": dates[i],
                    "window_row": int(window["row"]),
                    "window_col": int(window["col"]),
                    "negative_row": int(n["row"]),
                    "negative_col": int(n["col"]),
                    "minx": window["minx"],
                    "miny": window["miny"],
                    "maxx": window["maxx"],
                    "maxy": window["maxy"],
                    "crs": stack.attrs["crs"],
                    "transform": ",".join(
                        repr(v)
                        for v in (
                            grid.transform.a,
                            0.0,
                            window["minx"],
                            0.0,
                            grid.transform.e,
                            window["maxy"],
                        )
                    ),
                    "anchor_valid_fraction": float(window_valid[i]),
                    "positive_valid_fraction": float(window_valid[j]),
                }
            )

    def stacked(crops: list[np.ndarray]) -> np.ndarray:
        return (
            np.stack(crops).astype(np.float32)
            if crops
            else np.zeros((0, len(bands), size, size), np.float32)
        )

    return Triplets(
        stacked(anchors),
        stacked(positives),
        stacked(negatives),
        pd.DataFrame(rows, columns=PATCH_COLUMNS),
    )
