"""The stackstac reader against the hand-written WarpedVRT reader: same grid, same values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from rasterio.warp import transform_bounds

from pipelines.coregistration import READERS, coregister
from pipelines.grid import CoregistrationError, region_grid, utm_epsg
from pipelines.stac.items import item_epsg

# One L2A DN in reflectance (scale 1e-4), with room for float32 rounding of DN * scale + offset.
ONE_DN = 1.01e-4


def _assert_same_stack(warped: xr.Dataset, stacked: xr.Dataset) -> None:
    """Both readers warp each asset with GDAL's same kernels (bilinear for the bands, nearest for
    the SCL) onto the same windows, so the stacks are equal, not merely close: bit for bit where
    no shift is corrected. A shifted block is stackstac's stack of that window alone, which GDAL
    warps from another origin, so a bilinear DN may round to its neighbour: one DN at most."""
    assert stacked.reflectance.shape == warped.reflectance.shape
    assert stacked.reflectance.data.chunks == warped.reflectance.data.chunks
    for name in ("y", "x", "time", "band"):
        np.testing.assert_array_equal(stacked[name].values, warped[name].values)
    moved = np.abs(stacked.shift_px.values).max(axis=1) > 0
    np.testing.assert_array_equal(
        stacked.reflectance[~moved].values, warped.reflectance[~moved].values
    )
    np.testing.assert_allclose(
        stacked.reflectance[moved].values, warped.reflectance[moved].values, rtol=0, atol=ONE_DN
    )
    np.testing.assert_array_equal(stacked.valid.values, warped.valid.values)
    np.testing.assert_array_equal(stacked.shift_px.values, warped.shift_px.values)
    assert stacked.attrs == warped.attrs


def test_stackstac_reads_the_real_tile_as_the_warpedvrt_reader(real_data) -> None:
    """A 5 km square of the real 29RKH tile (its 20 m and 60 m bands upsampled), in 256 px
    blocks so that blocks cut across the source tiles."""
    folder = real_data("s2_l2a_cog_29RKH")
    item = json.loads((folder / "S2A_29RKH_20200219_0_L2A.json").read_text())
    rewrites = [(item["assets"]["red"]["href"].rsplit("/", 1)[0] + "/", f"{folder.resolve()}/")]
    epsg = item_epsg(item)
    grid = region_grid(
        transform_bounds(f"EPSG:{epsg}", "EPSG:4326", 240000, 2735000, 245000, 2740000), epsg
    )
    warped, stacked = (
        coregister([item], grid, "29RKH", href_rewrites=rewrites, chunk_px=256, reader=reader)
        for reader in ("warpedvrt", "stackstac")
    )
    assert np.isfinite(stacked.reflectance.values).mean() > 0.9
    _assert_same_stack(warped, stacked)


def test_stackstac_reads_the_tiny_demo_world_as_the_warpedvrt_reader(tiny_world) -> None:
    """Every region and date of the tiny demo world, shifts measured and corrected on top."""
    manifest = json.loads((tiny_world / "manifest.json").read_text())
    items = json.loads((tiny_world / "items.json").read_text())["features"]
    for region in manifest["regions"]:
        ids = set(region["item_ids"].values())
        lon0, lat0, lon1, lat1 = region["bbox"]
        grid = region_grid(region["bbox"], utm_epsg((lon0 + lon1) / 2, (lat0 + lat1) / 2))
        region_items = [it for it in items if it["id"] in ids]
        warped, stacked = (
            coregister(region_items, grid, region["name"], chunk_px=32, reader=reader)
            for reader in ("warpedvrt", "stackstac")
        )
        assert np.abs(stacked.shift_px.values).max() > 0
        _assert_same_stack(warped, stacked)


def test_an_unknown_reader_is_refused(tiny_world) -> None:
    items = json.loads((tiny_world / "items.json").read_text())["features"]
    manifest = json.loads((tiny_world / "manifest.json").read_text())
    grid = region_grid(manifest["regions"][0]["bbox"], item_epsg(items[0]))
    with pytest.raises(CoregistrationError, match=", ".join(READERS)):
        coregister(items[:1], grid, "x", reader="gdal")
