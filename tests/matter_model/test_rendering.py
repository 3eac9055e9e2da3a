"""The 2-98 % contrast stretch behind every preview."""

import numpy as np

from matter_model.rendering import contrast_stretch


def test_contrast_stretch_clips_outliers_and_shows_nan_as_zero() -> None:
    values = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    values[0], values[-1] = -50.0, 50.0  # outliers do not flatten the rest
    values[50] = np.nan
    out = contrast_stretch(values)
    assert out.min() == 0.0 and out.max() == 1.0 and out[50] == 0.0
    assert np.all(np.diff(out[10:50]) > 0)
    assert np.array_equal(contrast_stretch(np.full(4, np.nan)), np.zeros(4))
