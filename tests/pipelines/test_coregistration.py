"""Co-registration: grids, harmonisation, shift estimation, and the real 29RKH L2A tile."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from rasterio.warp import transform_bounds
from scipy import ndimage

from pipelines.coregistration import coregister
from pipelines.dates import stack_dates
from pipelines.demo_world import DEFAULT_SPEC, generate_demo_world
from pipelines.grid import CoregistrationError, Grid, block_windows, region_grid, utm_epsg
from pipelines.shift import apply_shift, estimate_shift
from pipelines.stac.items import item_epsg, reflectance_offset
from pipelines.stac.signing import resolve_href
from pipelines.stack_store import open_stack, write_stack


def test_utm_zone_of_a_point() -> None:
    assert utm_epsg(9.9, 45.3) == 32632
    assert utm_epsg(1.6, 48.2) == 32631
    assert utm_epsg(-47.9, -15.8) == 32723


def test_region_grid_is_snapped_to_the_10m_grid() -> None:
    grid = region_grid((9.87, 45.28, 9.93, 45.32), 32632)
    assert grid.transform.a == 10 and grid.transform.e == -10
    assert grid.transform.c % 10 == 0 and grid.transform.f % 10 == 0
    left, bottom, right, top = transform_bounds("EPSG:4326", "EPSG:32632", 9.87, 45.28, 9.93, 45.32)
    gl, gb, gr, gt = grid.bounds
    assert gl <= left and gb <= bottom and gr >= right and gt >= top


@pytest.mark.parametrize(
    ("baseline", "offset"), [("02.14", 0.0), ("03.01", 0.0), ("04.00", -0.1), ("05.10", -0.1)]
)
def test_offset_follows_the_processing_baseline_not_the_flag(baseline: str, offset: float) -> None:
    item = {
        "id": "x",
        "properties": {
            "s2:processing_baseline": baseline,
            "earthsearch:boa_offset_applied": offset == 0.0,
        },
    }
    assert reflectance_offset(item) == offset


def test_href_rewrite_to_a_local_mirror() -> None:
    rewrites = [("https://bucket.example/s2/", "/mirror/s2/")]
    assert resolve_href("https://bucket.example/s2/a/B04.tif", rewrites) == "/mirror/s2/a/B04.tif"
    assert resolve_href("file:///data/with%20space/B04.tif") == "/data/with space/B04.tif"


def test_item_epsg_reads_proj_epsg_and_proj_code() -> None:
    assert item_epsg({"id": "a", "properties": {"proj:epsg": 32631}}) == 32631
    assert item_epsg({"id": "b", "properties": {"proj:code": "EPSG:32632"}}) == 32632


@pytest.mark.parametrize("true_shift", [(0.3, -0.45), (-0.6, 0.2), (1.25, 0.7)])
def test_masked_correlation_recovers_a_subpixel_shift(true_shift: tuple[float, float]) -> None:
    rng = np.random.default_rng(0)
    scene = ndimage.gaussian_filter(rng.normal(size=(128, 128)), 2.0)
    moved = ndimage.shift(scene, true_shift, order=3, mode="wrap")
    valid = np.ones_like(scene, dtype=bool)
    valid[10:40, 60:90] = False  # a cloud
    measured = estimate_shift(scene, moved, valid)
    np.testing.assert_allclose(measured, true_shift, atol=0.1)


def _read_onto(path, grid: Grid, resampling) -> np.ndarray:
    """A raster warped onto ``grid`` by GDAL, as the co-registration reads its assets."""
    import rasterio
    from rasterio.vrt import WarpedVRT

    with (
        rasterio.open(path) as src,
        WarpedVRT(
            src,
            crs=src.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=resampling,
        ) as vrt,
    ):
        return vrt.read(1)


@pytest.mark.parametrize("band_name", ["B08", "B04"])
@pytest.mark.parametrize("true_shift", [(0.3, -0.7), (1.25, 0.4), (-0.55, 0.15)])
def test_planted_shifts_on_the_real_tile_are_measured(
    real_data, band_name: str, true_shift: tuple[float, float]
) -> None:
    """A real L2A band read twice by a GDAL warp, once onto a grid offset by a planted sub-pixel
    shift, clouds of its SCL masked: the shift is measured within 0.1 px."""
    from rasterio.enums import Resampling

    folder = real_data("s2_l2a_cog_29RKH")
    pixel = 100.0  # the local files are the tile 10x downsampled
    dy, dx = true_shift
    origin = Affine(pixel, 0, 269780, 0, -pixel, 2800020)  # the cloudy upper-right corner
    grid = Grid(32629, origin, width=400, height=400)
    # The moving grid starts (dy, dx) pixels up-left, so its content sits (dy, dx) down-right.
    moved = Grid(32629, origin * Affine.translation(-dx, -dy), width=400, height=400)
    reference = _read_onto(folder / f"{band_name}.tif", grid, Resampling.bilinear)
    moving = _read_onto(folder / f"{band_name}.tif", moved, Resampling.bilinear)
    scl = _read_onto(folder / "SCL.tif", grid, Resampling.nearest)
    valid = (reference > 0) & (moving > 0) & ~np.isin(scl, [0, 1, 3, 8, 9, 10])
    assert 0.5 < valid.mean() < 0.95  # clouds are masked
    measured = estimate_shift(reference.astype(float), moving.astype(float), valid)
    np.testing.assert_allclose(measured, true_shift, atol=0.1)


def test_real_l2a_tile_through_its_earth_search_item(tmp_path, real_data) -> None:
    """The real 29RKH tile, read through its real Earth Search v1 item with hrefs mapped locally."""
    folder = real_data("s2_l2a_cog_29RKH")
    item = json.loads((folder / "S2A_29RKH_20200219_0_L2A.json").read_text())
    cloud_prefix = item["assets"]["red"]["href"].rsplit("/", 1)[0] + "/"
    epsg = item_epsg(item)
    assert epsg == 32629
    bbox = transform_bounds(f"EPSG:{epsg}", "EPSG:4326", 240000, 2730000, 250000, 2740000)
    grid = region_grid(bbox, epsg)
    stack = coregister(
        [item], grid, region="29RKH", href_rewrites=[(cloud_prefix, str(folder.resolve()) + "/")]
    )
    reflectance = stack.reflectance.values[0]
    assert reflectance.shape == (12, grid.height, grid.width)
    # A bright desert: surface reflectance in a physical range, red above blue, no offset (02.14).
    median = np.nanmedian(reflectance, axis=(1, 2))
    bands = list(stack.band.values)
    assert np.all((median > 0.05) & (median < 0.8))
    assert median[bands.index("B04")] > median[bands.index("B02")]
    assert stack.valid_fraction.values[0] > 0.9
    path = write_stack(stack, tmp_path / "stack.zarr")
    reopened = open_stack(path)
    np.testing.assert_array_equal(reopened.reflectance.values, stack.reflectance.values)
    assert reopened.attrs["crs"] == "EPSG:32629"
    assert reopened.attrs["tiles"] == "29RKH"  # as the patch table's ``tile`` column records it


def test_grid_coords_are_pixel_centres() -> None:
    grid = Grid(32631, Affine(10, 0, 1000, 0, -10, 2000), width=3, height=2)
    y, x = grid.coords
    np.testing.assert_allclose(x, [1005, 1015, 1025])
    np.testing.assert_allclose(y, [1995, 1985])


@pytest.fixture(scope="module")
def default_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """The default demo world (384 px regions) and its items, generated once for this module."""
    root = tmp_path_factory.mktemp("default") / "world"
    manifest = generate_demo_world(root, DEFAULT_SPEC)
    return manifest, json.loads((root / "items.json").read_text())["features"]


def _region_stack(region: dict, items: list[dict], **kwargs) -> tuple[Grid, xr.Dataset]:
    ids = set(region["item_ids"].values())
    lon0, lat0, lon1, lat1 = region["bbox"]
    grid = region_grid(region["bbox"], utm_epsg((lon0 + lon1) / 2, (lat0 + lat1) / 2))
    return grid, coregister([it for it in items if it["id"] in ids], grid, region["name"], **kwargs)


@pytest.mark.parametrize(
    ("chunk_px", "sample_px"),
    [(1024, 1024), (128, 256)],
    ids=["one block, whole grid sampled", "128 px blocks, 256 px sample"],
)
def test_planted_shifts_of_the_demo_world_are_measured(
    default_world, chunk_px: int, sample_px: int
) -> None:
    """Each date's planted sub-pixel shift, measured against the reference date through clouds
    (the default demo world: its 384 px regions leave enough clear texture to measure), also
    when only the clearest 256 px of the grid are sampled."""
    manifest, items = default_world
    for region in manifest["regions"]:
        _, stack = _region_stack(region, items, chunk_px=chunk_px, sample_px=sample_px)
        reference = region["shifts_px"][stack.attrs["reference_date"]]
        dates = stack_dates(stack)
        for date, measured in zip(dates, stack.shift_px.values, strict=True):
            planted = np.subtract(region["shifts_px"][date], reference)
            np.testing.assert_allclose(measured, planted, atol=0.1, err_msg=date)


def test_chunked_stack_equals_the_whole_grid_one(tiny_world, tmp_path) -> None:
    """Blocks of 32 px, shifted with overlaps and streamed to zarr, give exactly the stack of
    one block holding the whole grid (what reading each date into memory gives)."""
    manifest = json.loads((tiny_world / "manifest.json").read_text())
    items = json.loads((tiny_world / "items.json").read_text())["features"]
    region = manifest["regions"][0]
    grid, whole = _region_stack(region, items, chunk_px=4096)
    _, chunked = _region_stack(region, items, chunk_px=32)
    blocks = (-(-grid.height // 32), -(-grid.width // 32))
    assert chunked.reflectance.data.numblocks == (len(whole.time), 1, *blocks)
    assert np.abs(whole.shift_px.values).max() > 0  # the overlapped resampling ran
    reopened = open_stack(write_stack(chunked, tmp_path / "chunked.zarr"))
    assert reopened.reflectance.encoding["chunks"] == (1, 1, 32, 32)
    for stack in (chunked, reopened):
        np.testing.assert_array_equal(stack.reflectance.values, whole.reflectance.values)
        np.testing.assert_array_equal(stack.valid.values, whole.valid.values)
        np.testing.assert_array_equal(stack.valid_fraction.values, whole.valid_fraction.values)
        np.testing.assert_array_equal(stack.shift_px.values, whole.shift_px.values)
    assert reopened.attrs == whole.attrs
    assert list(reopened.item_ids.values) == list(whole.item_ids.values)


def _shifted_whole(block: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The shift correction done plainly: every plane resampled at once, NaN where invalid."""
    moved = np.stack(
        [ndimage.shift(b, shift, order=1, mode="nearest") for b in np.nan_to_num(block[:-1])]
    )
    valid = ndimage.shift(block[-1], shift, order=1, mode="constant", cval=0) > 0.999
    moved[:, ~valid] = np.nan
    return np.concatenate([moved, valid[None].astype(np.float32)])


def test_block_shift_equals_resampling_every_plane_at_once() -> None:
    """apply_shift resamples band by band into its trimmed output: the same values as moving
    the whole block at once and trimming after, NaN and the valid plane included."""
    rng = np.random.default_rng(3)
    block = rng.uniform(0, 1, (4, 40, 50)).astype(np.float32)
    block[-1] = rng.uniform(size=(40, 50)) > 0.1
    block[:-1, block[-1] == 0] = np.nan
    shift = np.array([0.4, -1.3])
    trim = (slice(2, 38), slice(3, 47))
    expected = _shifted_whole(block, shift)
    np.testing.assert_array_equal(apply_shift(block, shift), expected)
    np.testing.assert_array_equal(apply_shift(block, shift, trim), expected[:, trim[0], trim[1]])


def test_block_windows_cover_the_grid_once() -> None:
    grid = Grid(32631, Affine(10, 0, 0, 0, -10, 0), width=70, height=50)
    windows = [w for row in block_windows(grid, 32) for w in row]
    assert [(w.col_off, w.row_off, w.width, w.height) for w in windows] == [
        (0, 0, 32, 32),
        (32, 0, 32, 32),
        (64, 0, 6, 32),
        (0, 32, 32, 18),
        (32, 32, 32, 18),
        (64, 32, 6, 18),
    ]
    with pytest.raises(CoregistrationError, match="chunk_px"):
        block_windows(grid, 0)


def test_a_shift_band_that_is_not_read_is_refused(tiny_world) -> None:
    items = json.loads((tiny_world / "items.json").read_text())["features"]
    grid = Grid(32631, Affine(10, 0, 0, 0, -10, 0), width=8, height=8)
    with pytest.raises(CoregistrationError, match="shift_band B08"):
        coregister(items, grid, "x", bands=("B02", "B03"), shift_band="B08")
