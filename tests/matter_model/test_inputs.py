"""Image preparation: what a checkpoint's training patches held decides what evaluation feeds."""

import numpy as np
import pytest

from matter_model.inputs import (
    NORMALISATIONS,
    PREPARATIONS,
    as_reflectance,
    input_preparation,
    standardise,
)


def test_every_store_value_has_a_preparation():
    assert set(PREPARATIONS) == set(NORMALISATIONS)
    assert input_preparation({}) is as_reflectance  # checkpoints older than the key
    assert input_preparation({"normalisation": "scene-standardised"}) is standardise
    with pytest.raises(ValueError, match="'dn'.*knows"):
        input_preparation({"normalisation": "dn"})


def test_scene_standardisation_removes_a_gain_and_offset_per_band():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 0.05, size=(3, 40, 50)).astype(np.float32)
    brighter = image * np.array([1.3, 0.8, 1.1], np.float32)[:, None, None] + 0.02
    np.testing.assert_allclose(standardise(image), standardise(brighter), atol=1e-4)


def test_standardise_is_robust_and_per_band() -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(5, 2, (2, 50, 50)).astype(np.float32)
    image[1] *= 100
    image[0, 0, :5] = 1e6  # outliers barely move median / IQR
    z = standardise(image)
    assert np.abs(np.median(z, axis=(1, 2))).max() < 0.05
    assert np.all(np.abs(np.subtract(*np.percentile(z, [75, 25], axis=(1, 2))) - 1.349) < 0.1)


def test_standardise_over_a_mask_ignores_the_pixels_outside_it() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(5, 2, (2, 30, 30)).astype(np.float32)
    valid = np.zeros((30, 30), dtype=bool)
    valid[:, :20] = True
    cloudy = image.copy()
    cloudy[:, ~valid] = 1e6
    np.testing.assert_array_equal(
        standardise(cloudy, valid=valid)[:, valid], standardise(image[:, :, :20]).reshape(2, -1)
    )
