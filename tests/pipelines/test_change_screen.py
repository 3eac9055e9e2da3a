"""Change screening: illumination does not fool it, planted changes do not slip through, and
on the real OSCD cities the kept windows are as trustworthy as the benchmark measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from matter_model.datasets.oscd import OSCD
from pipelines.change_screen import (
    pixel_change_score,
    screen_windows,
    screening_quality,
    threshold_for_precision,
    window_max,
    window_scores,
    window_statistic,
    window_truth,
)
from tests.pipelines.stacks import synthetic_stack

SCREEN = yaml.safe_load((Path(__file__).parents[2] / "assets" / "demo.yaml").read_text())["screen"]


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


def test_window_quantile_matches_numpy_and_empty_windows_score_minus_inf() -> None:
    rng = np.random.default_rng(2)
    score = rng.normal(size=(32, 32)).astype(np.float32)
    score[:16, :16] = np.nan
    score[16, 20] = np.nan
    got = window_statistic(score, 16, quantile=0.95)
    assert got[0, 0] == -np.inf
    np.testing.assert_allclose(got[1, 1], np.nanquantile(score[16:, 16:], 0.95), rtol=1e-6)
    np.testing.assert_array_equal(window_statistic(score, 16, 1.0), window_max(score, 16))
    with pytest.raises(ValueError, match="quantile"):
        window_statistic(score, 16, quantile=0.0)


def test_spectral_angle_ignores_a_common_gain_and_sees_a_new_spectrum() -> None:
    stack = synthetic_stack(changed=(56, 80, 14, 12))
    first = stack["reflectance"].values[1]
    valid = np.ones(first.shape[1:], dtype=bool)
    assert np.nanmax(pixel_change_score(first, 1.3 * first, valid, "sam")) < 1e-3
    last = stack["reflectance"].values[2]
    angle = pixel_change_score(first, last, valid, "sam")
    assert np.median(angle[58:68, 82:90]) > 1.5 * np.quantile(angle, 0.99)
    with pytest.raises(ValueError, match="choose one of"):
        pixel_change_score(first, last, valid, "ndvi")


def test_radiometric_normalisation_reads_in_noise_sigmas() -> None:
    """Per-band gain and haze are fitted away, so unchanged windows score about one noise sigma
    and the planted new spectrum scores tens of them."""
    stack = synthetic_stack(changed=(56, 80, 14, 12))
    table = screen_windows(stack, window=32, threshold=3.0, min_valid_fraction=0.5, method="rrn")
    truth = np.zeros((128, 128), dtype=bool)
    truth[56:70, 80:92] = True
    changed = window_truth(truth, 32)
    assert table["score"][changed].min() > 20
    assert table["score"][~changed].max() < 2
    assert table["unchanged"].to_numpy().tolist() == (~changed).tolist()


def test_threshold_for_precision_is_the_loosest_that_reaches_the_target() -> None:
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.4, 0.5, np.inf])
    changed = np.array([False, False, True, False, False, True, True])
    threshold = threshold_for_precision(score, changed, target=0.75)
    assert 0.4 < threshold < 0.5  # keeps 4 unchanged of 5: 0.8; adding 0.5 would be 4/6
    assert threshold_for_precision(score, changed, target=1.0) == pytest.approx(0.2)


@pytest.fixture(scope="module")
def oscd_windows(real_data) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per labelled OSCD city: the configured window score and the truly changed windows."""
    oscd = OSCD(real_data("oscd"))
    windows = {}
    for name in oscd.labelled_cities():
        city = oscd.load(name, require_label=True)
        score, _ = window_scores(
            np.stack([city.image_1, city.image_2]),
            np.stack([city.valid, city.valid]),
            int(SCREEN["window"]),
            SCREEN.get("method", "cva"),
            float(SCREEN.get("quantile", 1.0)),
        )
        windows[name] = (score.ravel(), window_truth(city.label, window=int(SCREEN["window"])))
    assert len(windows) == 7
    return windows


@pytest.mark.parametrize(
    ("threshold", "min_precision", "min_recall"),
    [
        # the configured threshold, fitted for 0.99 on all seven cities: 1.000, recall 0.011
        (float(SCREEN["threshold"]), 0.99, 0.008),
        # the former default keeps half the unchanged windows: 0.856, recall 0.526
        (1.2, 0.84, 0.5),
    ],
)
def test_oscd_precision_and_recall_at_a_threshold(
    oscd_windows, threshold: float, min_precision: float, min_recall: float
) -> None:
    """Floors a little under what benchmarks/change_screen.py measured over the seven cities."""
    score = np.concatenate([s for s, _ in oscd_windows.values()])
    changed = np.concatenate([c for _, c in oscd_windows.values()])
    quality = screening_quality(pd.DataFrame({"unchanged": score < threshold}), changed)
    assert quality["kept_precision"] >= min_precision
    assert quality["unchanged_recall"] >= min_recall


def test_oscd_leave_one_city_out_at_the_99_percent_target(oscd_windows) -> None:
    """Thresholds fitted for 0.99 precision on six cities keep 0.911 truly unchanged windows of
    the seventh (56 kept, recall 0.039), over all seven held-out cities: the honest estimate of
    the configured threshold on an unseen city."""
    kept_true = kept = 0
    for name, (score, changed) in oscd_windows.items():
        others = [w for n, w in oscd_windows.items() if n != name]
        threshold = threshold_for_precision(
            np.concatenate([s for s, _ in others]), np.concatenate([c for _, c in others]), 0.99
        )
        keep = score < threshold
        kept_true += int((keep & ~changed).sum())
        kept += int(keep.sum())
    assert kept >= 40
    assert kept_true / kept >= 0.89
