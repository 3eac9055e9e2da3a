"""OSCD reader: tiny fixtures in the official layout (``oscd_fixtures.py``), and the real dataset
when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matter_model.bands import MATTER_BANDS
from matter_model.datasets.oscd import IMAGES_DIR, OSCD, OSCDError
from tests.conftest import REAL_DATA
from tests.matter_model.oscd_fixtures import BOUNDS, make_city

REAL_ROOT = REAL_DATA / "oscd"


def test_fixture_loads_on_the_10m_grid(tmp_path: Path) -> None:
    make_city(tmp_path)
    ds = OSCD(tmp_path)
    assert ds.cities("train") == ["town"] and ds.labelled_cities() == ["town"]
    city = ds.load("town", require_label=True)
    assert city.image_1.shape == city.image_2.shape == (len(MATTER_BANDS), 20, 24)
    assert city.image_1.dtype == np.float32
    assert city.label is not None and city.label.sum() == 4 * 6 and city.label[2, 3]
    assert city.valid.all()
    assert str(city.dates[0]) == "2016-01-20"
    # A 20 m band resampled bilinearly follows the same longitude ramp as B02.
    b02, b05 = city.image_1[MATTER_BANDS.index("B02")], city.image_1[MATTER_BANDS.index("B05")]
    assert np.abs(b05 - b02)[2:-2, 2:-2].max() < 2e-3
    np.testing.assert_allclose(city.image_1, city.image_2)
    pair = city.to_pair()
    assert pair.truth is city.label and pair.valid is city.valid


def test_smaller_second_date_is_aligned_by_georeference(tmp_path: Path) -> None:
    # Same bounds, 4 px fewer rows and 3 fewer columns: larger pixels, as in abudhabi.
    make_city(tmp_path, shape_2=(16, 21))
    city = OSCD(tmp_path).load("town", bands=("B02",))
    assert city.image_2.shape == city.image_1.shape
    # The ramp is a function of longitude: once aligned both dates agree (bilinear, interior).
    np.testing.assert_allclose(city.image_2[0, :, 2:-2], city.image_1[0, :, 2:-2], atol=1e-3)


def test_missing_band_names_the_band_and_folder(tmp_path: Path) -> None:
    make_city(tmp_path, missing="B11")
    with pytest.raises(OSCDError, match=r"B11.*imgs_2"):
        OSCD(tmp_path).load("town")
    OSCD(tmp_path).load("town", bands=("B02", "B03"))  # bands not asked for are not needed


def test_label_shape_mismatch_is_an_error(tmp_path: Path) -> None:
    make_city(tmp_path, label_shape=(20, 40))
    with pytest.raises(OSCDError, match=r"town-cm\.tif.*\(20, 40\).*\(20, 24\).*16 px"):
        OSCD(tmp_path).load("town")


def test_small_label_mismatch_is_padded_and_marked_invalid(tmp_path: Path) -> None:
    make_city(tmp_path, label_shape=(18, 24))
    city = OSCD(tmp_path).load("town", bands=("B02",))
    assert city.label is not None and city.label.shape == (20, 24)
    assert not city.valid[18:].any() and city.valid[:18].all()


def test_second_date_elsewhere_is_an_error(tmp_path: Path) -> None:
    west, south, east, north = BOUNDS
    shifted = (west + 10e-4, south, east + 10e-4, north)  # 10 px east
    make_city(tmp_path, bounds_2=shifted)
    with pytest.raises(OSCDError, match=r"imgs_2.*T31UDQ_B02\.tif.*10\.0 px"):
        OSCD(tmp_path).load("town")


def test_unlabelled_city_when_labels_are_required(tmp_path: Path) -> None:
    make_city(tmp_path, label=False)
    ds = OSCD(tmp_path)
    assert ds.labelled_cities() == []
    assert ds.load("town", bands=("B02",)).label is None
    with pytest.raises(OSCDError, match="'town' has no change label"):
        ds.load("town", require_label=True)


def test_bad_root_and_city(tmp_path: Path) -> None:
    with pytest.raises(OSCDError, match="Images"):
        OSCD(tmp_path)
    make_city(tmp_path)
    with pytest.raises(OSCDError, match="'nowhere' not found"):
        OSCD(tmp_path).load("nowhere")


real = pytest.mark.skipif(
    not (REAL_ROOT / IMAGES_DIR).is_dir(),
    reason=f"real OSCD data not found at {REAL_ROOT} (set MATTER_REAL_DATA)",
)


@pytest.fixture(scope="module")
def real_cities() -> dict:
    ds = OSCD(REAL_ROOT)
    return {c: ds.load(c, require_label=True) for c in ds.labelled_cities()}


@real
def test_real_labelled_cities_load(real_cities: dict) -> None:
    assert sorted(real_cities) == sorted(OSCD(REAL_ROOT).cities("train"))
    assert len(real_cities) == 7
    for name, city in real_cities.items():
        c, h, w = city.image_1.shape
        assert c == 9 and city.image_2.shape == (c, h, w) and city.label.shape == (h, w), name
        assert np.isfinite(city.image_1).all() and np.isfinite(city.image_2).all(), name
        assert 0 < city.label.mean() < 0.5, name
        assert city.valid.mean() > 0.99, name
        assert 0 < np.median(city.image_1[0]) < 1, name  # reflectance, not DN


def _shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer (dy, dx) of ``b`` relative to ``a`` by phase correlation."""
    r = np.fft.ifft2(np.fft.fft2(b - b.mean()) * np.conj(np.fft.fft2(a - a.mean()))).real
    d = np.array(np.unravel_index(np.argmax(r), r.shape))
    return np.where(d > np.array(r.shape) // 2, d - np.array(r.shape), d)


@real
def test_real_abudhabi_second_date_is_aligned(real_cities: dict) -> None:
    # imgs_2 is 795 x 782 against 799 x 785 over the same bounds. Raw, its content drifts by
    # 3 px from top-left to bottom-right; aligned by georeference the offset is uniform.
    city = real_cities["abudhabi"]
    assert city.image_2.shape == city.image_1.shape
    nir_1, nir_2 = (img[MATTER_BANDS.index("B08")] for img in (city.image_1, city.image_2))
    top_left = _shift(nir_1[:128, :128], nir_2[:128, :128])
    bottom_right = _shift(nir_1[-128:, -128:], nir_2[-128:, -128:])
    assert np.abs(top_left - bottom_right).max() <= 1, (top_left, bottom_right)
    assert np.abs(bottom_right).max() <= 2
