"""The scene reader refuses a file whose CRS is not the one its STAC item declares.

A band relabelled to another datum (ED50 instead of WGS84, same zone, same numbers) is read
without complaint by its own georeference, a hundred metres off: the check turns that silent
misplacement into an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

from pipelines.grid import CoregistrationError, Grid
from pipelines.scene_reader import read_asset, read_item, scl_valid_block
from pipelines.stac.items import asset_epsg

EPSG, ED50 = 32632, 23032  # WGS 84 / UTM 32N, and ED50 / UTM 32N (same numbers, other datum)
GRID = Grid(EPSG, Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5050000.0), width=64, height=64)


def _write(path: Path, values: np.ndarray, epsg: int) -> str:
    profile = {"driver": "GTiff", "width": GRID.width, "height": GRID.height, "count": 1}
    profile |= {"dtype": values.dtype, "crs": CRS.from_epsg(epsg), "transform": GRID.transform}
    with rasterio.open(path, "w", **profile, nodata=0) as dst:
        dst.write(values, 1)
    return str(path)


def _item(b04: str, scl: str, **asset_proj: object) -> dict:
    return {
        "id": "S2B_TEST",
        "properties": {"proj:epsg": EPSG, "s2:processing_baseline": "05.10"},
        "assets": {"B04": {"href": b04, **asset_proj}, "SCL": {"href": scl}},
    }


@pytest.fixture
def texture() -> np.ndarray:
    return np.random.default_rng(0).integers(1000, 3000, (GRID.height, GRID.width), np.uint16)


def test_a_relabelled_band_would_land_elsewhere_unchecked(tmp_path: Path, texture) -> None:
    right = _write(tmp_path / "right.tif", texture, EPSG)
    relabelled = _write(tmp_path / "relabelled.tif", texture, ED50)
    read_right, _ = read_asset(right, GRID, Resampling.nearest)
    read_wrong, _ = read_asset(relabelled, GRID, Resampling.nearest)
    np.testing.assert_array_equal(read_right, texture)
    assert np.mean(read_wrong != texture) > 0.9  # the datum shift moved every pixel


def test_a_band_whose_crs_is_not_the_items_is_refused_naming_it(tmp_path: Path, texture) -> None:
    b04 = _write(tmp_path / "B04.tif", texture, ED50)
    scl = _write(tmp_path / "SCL.tif", np.full_like(texture, 4, dtype=np.uint8), EPSG)
    with pytest.raises(CoregistrationError, match="B04.tif has CRS EPSG:23032") as failure:
        read_item(_item(b04, scl), GRID, ["B04"])
    assert "declares EPSG:32632" in str(failure.value)
    assert "Download the file again" in str(failure.value)


def test_an_scl_whose_crs_is_not_the_items_is_refused(tmp_path: Path, texture) -> None:
    b04 = _write(tmp_path / "B04.tif", texture, EPSG)
    scl = _write(tmp_path / "SCL.tif", np.full_like(texture, 4, dtype=np.uint8), ED50)
    with pytest.raises(CoregistrationError, match="SCL.tif has CRS EPSG:23032"):
        scl_valid_block([_item(b04, scl)], GRID, (0,), ())


def test_bands_in_the_declared_crs_are_read(tmp_path: Path, texture) -> None:
    b04 = _write(tmp_path / "B04.tif", texture, EPSG)
    scl = _write(tmp_path / "SCL.tif", np.full_like(texture, 4, dtype=np.uint8), EPSG)
    reflectance, scl_read = read_item(_item(b04, scl), GRID, ["B04"])
    np.testing.assert_allclose(reflectance[0], texture * 1e-4 - 0.1, atol=1e-6)
    assert (scl_read == 4).all()


def test_an_assets_own_projection_overrides_the_items(tmp_path: Path, texture) -> None:
    item = _item("B04.tif", "SCL.tif", **{"proj:code": f"EPSG:{ED50}"})
    assert (asset_epsg(item, "B04"), asset_epsg(item, "SCL")) == (ED50, EPSG)
