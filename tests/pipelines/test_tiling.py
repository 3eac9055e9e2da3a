"""Triplet tiling: only unchanged windows, negatives far away, deterministic, no NaN."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.change_screen import screen_windows
from pipelines.tiling import cut_triplets
from tests.pipelines.stacks import BANDS, synthetic_stack


def _cut(seed: int = 0, **kwargs):
    stack = synthetic_stack(size=128, dates=3, changed=(56, 80, 14, 12))
    screen = screen_windows(stack, window=32, threshold=1.5, min_valid_fraction=0.5)
    return (
        stack,
        screen,
        cut_triplets(stack, screen, bands=BANDS, seed=seed, min_valid_fraction=0.5, **kwargs),
    )


def test_triplets_come_from_unchanged_windows_only() -> None:
    _, screen, triplets = _cut()
    kept = set(map(tuple, screen.loc[screen.unchanged, ["row", "col"]].to_numpy()))
    used = set(map(tuple, triplets.patches[["window_row", "window_col"]].to_numpy()))
    negatives = set(map(tuple, triplets.patches[["negative_row", "negative_col"]].to_numpy()))
    assert used <= kept and negatives <= kept
    assert (triplets.patches.anchor_date != triplets.patches.positive_date).all()


def test_shapes_and_no_nan() -> None:
    _, _, triplets = _cut()
    n = len(triplets.patches)
    assert n > 0
    for crops in (triplets.anchor, triplets.positive, triplets.negative):
        assert crops.shape == (n, len(BANDS), 32, 32) and crops.dtype == np.float32
        assert np.isfinite(crops).all()


def test_positive_is_the_same_place_and_negative_is_far() -> None:
    stack, _, triplets = _cut(min_negative_distance_px=64)
    p = triplets.patches
    distance = np.hypot(p.window_row - p.negative_row, p.window_col - p.negative_col) * 32
    assert (distance >= 64).all()
    # Same place at another date: the anchor correlates with its positive far more than with
    # its negative, despite per-date gain and haze.
    a, pos, neg = triplets.anchor[:, 6], triplets.positive[:, 6], triplets.negative[:, 6]

    def corr(x: np.ndarray, y: np.ndarray) -> float:
        return np.corrcoef(x.ravel(), y.ravel())[0, 1]

    assert np.mean([corr(a[i], pos[i]) for i in range(len(p))]) > 0.9
    assert np.mean([abs(corr(a[i], neg[i])) for i in range(len(p))]) < 0.3


def test_deterministic_for_a_seed() -> None:
    _, _, first = _cut(seed=3)
    _, _, again = _cut(seed=3)
    _, _, other = _cut(seed=4)
    pd.testing.assert_frame_equal(first.patches, again.patches)
    np.testing.assert_array_equal(first.negative, again.negative)
    assert not first.patches.negative_row.equals(
        other.patches.negative_row
    ) or not first.patches.negative_col.equals(other.patches.negative_col)


def test_no_unchanged_window_gives_an_empty_but_typed_table() -> None:
    stack = synthetic_stack(size=64, dates=2, changed=None)
    screen = screen_windows(stack, window=32, threshold=-1.0)  # nothing passes
    triplets = cut_triplets(stack, screen, bands=BANDS, seed=0)
    assert len(triplets.patches) == 0 and "anchor_date" in triplets.patches.columns
    assert triplets.anchor.shape == (0, len(BANDS), 32, 32)
