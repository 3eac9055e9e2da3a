"""Change screening: illumination does not fool it, planted changes do not slip through."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.change_screen import (
    screen_windows,
    screening_quality,
    window_max,
    window_truth,
)
from tests.pipelines.stacks import synthetic_stack


def test_window_max_matches_a_naive_loop() -> None:
    rng = np.random.default_rng(1)
    score = rng.normal(size=(70, 64)).astype(np.float32)
    score[3, 5] = np.nan
    expected = np.array(
        [
            [np.nanmax(score[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]) for c in range(4)]
            for r in range(4)
        ]
    )
    np.testing.assert_allclose(window_max(score, 16), expected)


def test_planted_change_is_screened_out_and_illumination_is_not() -> None:
    stack = synthetic_stack(changed=(56, 80, 14, 12))
    table = screen_windows(stack, window=32, threshold=1.5, min_valid_fraction=0.5)
    truth = np.zeros((128, 128), dtype=bool)
    truth[56:70, 80:92] = True
    changed = window_truth(truth, 32)
    assert changed.sum() == 2  # the patch straddles two windows
    kept = table["unchanged"].to_numpy()
    assert not (kept & changed).any()
    assert kept[~changed].mean() >= 0.9  # gain and haze alone do not make a window "changed"


def test_windows_that_are_too_cloudy_are_not_kept() -> None:
    stack = synthetic_stack(changed=None)
    table = screen_windows(stack, window=16, threshold=1.5, min_valid_fraction=0.9)
    cloudy = table[(table.y0 < 16) & (table.x0 < 16)]
    assert not cloudy["unchanged"].any()
    assert table["unchanged"].mean() > 0.9


def test_screening_quality_counts() -> None:
    table = pd.DataFrame({"unchanged": [True, True, True, False, False]})
    truly_changed = np.array([False, False, True, True, False])
    quality = screening_quality(table, truly_changed)
    assert quality == {"kept": 3, "kept_precision": 2 / 3, "unchanged_recall": 2 / 3}
