"""The OSCD patch store for real-imagery pretraining: unlabelled cities only, one shard each."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from matter_model.bands import MATTER_BANDS
from matter_model.datasets.oscd import OSCD, OSCDError
from matter_model.inputs import standardise
from matter_model.patch_store import TripletDataset, read_info, read_patches, shard_ids
from pipelines.oscd_patches import build_oscd_patch_store, city_stack
from tests.conftest import REAL_DATA
from tests.matter_model.oscd_fixtures import make_city, make_release

REAL_ROOT = REAL_DATA / "oscd"


def test_unlabelled_cities_become_one_shard_each_and_reruns_replace_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipelines.oscd_patches")
    release, store = make_release(tmp_path / "oscd"), tmp_path / "patches"
    options = {"window": 8, "min_negative_distance_px": 16}
    written = build_oscd_patch_store(release, store, **options)
    assert list(written) == ["nolabel"] and written["nolabel"] > 0  # labelled cities are held out
    assert caplog.messages[0].startswith("nolabel: ") and "triplets" in caplog.messages[0]
    assert shard_ids(store) == ["oscd-nolabel"]
    assert read_info(store).bands == MATTER_BANDS and read_info(store).patch_size == 8
    table = read_patches(store)
    assert len(table) == written["nolabel"] and set(table["region"]) == {"oscd-nolabel"}
    assert set(table["anchor_date"]) | set(table["positive_date"]) == {"2016-01-20", "2018-03-28"}
    triplet = TripletDataset(store)[0]
    assert triplet["anchor"].shape == (9, 8, 8) and np.isfinite(triplet["anchor"].numpy()).all()
    assert read_info(store).normalisation == "scene-standardised"
    assert build_oscd_patch_store(release, store, **options) == written
    assert shard_ids(store) == ["oscd-nolabel"]


def test_negatives_come_from_the_next_city_with_unchanged_windows(tmp_path: Path) -> None:
    release, store = make_release(tmp_path / "oscd"), tmp_path / "patches"
    make_city(release, "other", (40, 48), label=False, noise_dn=30, split="test")
    options = {"window": 8, "min_negative_distance_px": 16}
    written = build_oscd_patch_store(release, store, **options)
    assert sorted(written) == ["nolabel", "other"] and all(written.values())
    table = read_patches(store)
    for region, negative_region in (("oscd-nolabel", "oscd-other"), ("oscd-other", "oscd-nolabel")):
        assert set(table.loc[table["region"] == region, "negative_region"]) == {negative_region}
    same = tmp_path / "same"
    build_oscd_patch_store(release, same, negatives="same-city", **options)
    table = read_patches(same)
    assert (table["negative_region"] == table["region"]).all()


def test_unknown_negatives_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown negatives 'elsewhere'"):
        build_oscd_patch_store(tmp_path, tmp_path / "patches", negatives="elsewhere")


def test_a_release_without_unlabelled_cities_is_an_error(tmp_path: Path) -> None:
    make_city(tmp_path, "town", (40, 48))
    with pytest.raises(OSCDError, match="no unlabelled OSCD city"):
        build_oscd_patch_store(tmp_path, tmp_path / "patches")


@pytest.mark.skipif(
    not REAL_ROOT.is_dir(), reason=f"real OSCD data not found at {REAL_ROOT} (set MATTER_REAL_DATA)"
)
def test_real_unlabelled_city(tmp_path: Path) -> None:
    written = build_oscd_patch_store(REAL_ROOT, tmp_path, ["rio"])
    assert written["rio"] > 0
    anchor = TripletDataset(tmp_path)[0]["anchor"].numpy()
    assert anchor.shape == (9, 32, 32) and read_info(tmp_path).normalisation == "scene-standardised"
    # robust z-scores of the scene: about unit spread, neither DN nor reflectance
    assert 0.1 < np.subtract(*np.percentile(anchor, [75, 25])) < 10


def test_city_stack_standardises_each_date_over_the_scene(tmp_path: Path) -> None:
    city = OSCD(make_release(tmp_path / "oscd")).load("nolabel")
    stack = city_stack(city)["reflectance"].values
    for date, image in enumerate((city.image_1, city.image_2)):
        np.testing.assert_allclose(stack[date], standardise(image))
    np.testing.assert_allclose(np.median(stack, axis=(2, 3)), 0, atol=1e-5)
