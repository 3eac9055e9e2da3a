"""Triplet tiling: only unchanged windows, negatives far away, deterministic, no NaN; strips into
the patch store; COGs of the real 29RKH tile read at native resolution."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from affine import Affine
from rasterio.enums import Resampling

from matter_model.patch_store import ENCODINGS, TripletDataset, read_info, read_shard, shard_ids
from pipelines.bands import SCL_INVALID_DEFAULT
from pipelines.change_screen import screen_windows
from pipelines.cog_stack import (
    CogScene,
    CogStack,
    CogStackError,
    as_stored,
    upsampled,
    upsampled_into,
)
from pipelines.grid import Grid
from pipelines.scene_reader import read_asset
from pipelines.tiling import (
    PATCH_COLUMNS,
    NegativePool,
    StackSource,
    TilingResult,
    TilingSettings,
    all_windows,
    count_triplets,
    cut_triplets,
    plan_triplets,
    tile_to_store,
)
from tests.pipelines.stacks import BANDS, synthetic_stack


def _cut(seed: int = 0, **kwargs):
    stack = synthetic_stack(size=128, dates=3, changed=(56, 80, 14, 12))
    screen = screen_windows(stack, window=32, threshold=1.5, min_valid_fraction=0.5)
    return (
        stack,
        screen,
        cut_triplets(
            stack, screen, BANDS, TilingSettings(seed=seed, min_valid_fraction=0.5, **kwargs)
        ),
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
    triplets = cut_triplets(stack, screen, BANDS, TilingSettings(seed=0))
    assert len(triplets.patches) == 0 and "anchor_date" in triplets.patches.columns
    assert triplets.anchor.shape == (0, len(BANDS), 32, 32)


# --- planning: validity, negatives, strips, bad settings -------------------------------------


def _windows(rows: int, cols: int, size: int = 32) -> pd.DataFrame:
    grid = Grid(32631, Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4500000.0), cols * size, rows * size)
    return all_windows(grid, size)


def test_a_negative_is_valid_enough_at_the_anchor_date() -> None:
    windows = _windows(4, 4)
    fractions = np.ones((3, 4, 4))
    fractions[0, 3, :] = 0.2  # the bottom row is cloudy at date 0 only
    plan = plan_triplets(windows, fractions, TilingSettings(seed=1, min_valid_fraction=0.9))
    negative_rows = windows["row"].to_numpy()[plan["negative"]]
    anchor_rows = windows["row"].to_numpy()[plan["window"]]
    assert not ((plan["anchor"] == 0) & (negative_rows == 3)).any()
    assert not ((plan["anchor"] == 0) & (anchor_rows == 3)).any()
    assert not ((plan["positive"] == 0) & (anchor_rows == 3)).any()
    # Every ordered pair of the three dates above the cloud, only dates 1 and 2 under it.
    assert len(plan) == 12 * 6 + 4 * 2


def test_max_pairs_per_window_and_strips() -> None:
    windows = _windows(4, 6)
    fractions = np.ones((4, 4, 6))
    settings = TilingSettings(
        seed=0, min_negative_distance_px=64, max_pairs_per_window=2, strip_rows=2
    )
    plan = plan_triplets(windows, fractions, settings)
    assert (plan.groupby("window").size() == 2).all()
    rows = windows["row"].to_numpy()
    assert (rows[plan["window"]] // 2 == rows[plan["negative"]] // 2).all()
    centres = windows[["y0", "x0"]].to_numpy()
    distance = np.hypot(*(centres[plan["window"]] - centres[plan["negative"]]).T)
    assert (distance >= 64).all()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"min_valid_fraction": 1.5}, "min_valid_fraction"),
        ({"max_pairs_per_window": 0}, "max_pairs_per_window"),
        ({"strip_rows": 0}, "strip_rows"),
        ({"codec": "gzip"}, "unknown codec 'gzip'"),
    ],
)
def test_bad_settings_are_named(setting: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TilingSettings(**setting)


def test_the_patch_table_is_complete() -> None:
    stack, _, triplets = _cut()
    p = triplets.patches
    assert list(p.columns) == PATCH_COLUMNS and not p.isna().any().any()
    assert (p.crs == stack.attrs["crs"]).all() and (p.region == "synthetic").all()
    for column in ("anchor_valid_fraction", "positive_valid_fraction", "negative_valid_fraction"):
        assert p[column].between(0.5, 1.0).all()
    # The transform puts the window's upper-left pixel at its bbox corner, 10 m pixels.
    a, _, c, _, e, f = (float(v) for v in p["transform"].iloc[0].split(","))
    assert (a, e) == (10.0, -10.0) and (c, f) == (p.minx.iloc[0], p.maxy.iloc[0])
    assert np.allclose(p.maxx - p.minx, 320) and np.allclose(p.maxy - p.miny, 320)
    origin = stack.attrs["transform"]
    assert np.allclose(p.minx, origin[2] + p.window_col * 320)


def test_negatives_from_another_region() -> None:
    stack, screen, _ = _cut()
    other = synthetic_stack(size=96, dates=2, changed=None, seed=7)
    other.attrs["region"] = "elsewhere"
    # The other region's dates: 2024-05-11 and 2024-05-16, nearest to 05-10 and 05-15 / 05-20.
    other = other.assign_coords(time=other.time + np.timedelta64(1, "D"))
    other_screen = screen_windows(other, window=32, threshold=1.5, min_valid_fraction=0.5)
    pool = NegativePool(StackSource(other, BANDS), other_screen)
    triplets = cut_triplets(
        stack, screen, BANDS, TilingSettings(seed=0, min_valid_fraction=0.5), negative_pool=pool
    )
    p = triplets.patches
    assert (
        len(p) > 0 and (p.negative_region == "elsewhere").all() and (p.region == "synthetic").all()
    )
    nearest = {"2024-05-10": "2024-05-11", "2024-05-15": "2024-05-16", "2024-05-20": "2024-05-16"}
    assert (p.negative_date == p.anchor_date.map(nearest)).all()
    kept = set(map(tuple, other_screen.loc[other_screen.unchanged, ["row", "col"]].to_numpy()))
    assert set(map(tuple, p[["negative_row", "negative_col"]].to_numpy())) <= kept
    # The negative is the other region's pixels at that window and date.
    first = p.iloc[0]
    date = list(pool.source.dates).index(first.negative_date)
    y, x = first.negative_row * 32, first.negative_col * 32
    expected = other.reflectance.values[date, :, y : y + 32, x : x + 32]
    np.testing.assert_array_equal(triplets.negative[0], expected)


# --- into the patch store ---------------------------------------------------------------------


def test_tile_to_store_in_strips_is_readable_and_reruns_identically(tmp_path) -> None:
    stack = synthetic_stack(size=128, dates=3, changed=None)
    screen = screen_windows(stack, window=32, threshold=1.5, min_valid_fraction=0.5)
    settings = TilingSettings(
        seed=2, min_valid_fraction=0.5, min_negative_distance_px=64, strip_rows=2
    )

    def tile(root: Path) -> TilingResult:
        return tile_to_store(StackSource(stack, BANDS), screen, root, "part", BANDS, settings)

    first = tile(tmp_path / "a")
    assert [s.name for s in first.shards] == ["part-0000", "part-0001"]
    counted = count_triplets(StackSource(stack, BANDS), screen, settings)
    assert counted == first.triplets  # the plan alone predicts what is written
    assert shard_ids(tmp_path / "a") == ["part-0000", "part-0001"]
    dataset = TripletDataset(tmp_path / "a", BANDS)
    assert len(dataset) == first.triplets > 0
    sample = dataset[0]
    assert sample["anchor"].shape == (len(BANDS), 32, 32)
    again = tile(tmp_path / "a")
    assert again.triplets == first.triplets
    other = tile(tmp_path / "b")
    for shard in ("part-0000", "part-0001"):
        for role in ("anchor", "positive", "negative"):
            np.testing.assert_array_equal(
                zarr.open_group(tmp_path / "a" / "shards" / shard)[role][:],
                zarr.open_group(tmp_path / "b" / "shards" / shard)[role][:],
            )
    assert other.triplets == first.triplets


def test_whole_scene_shard_matches_cut_triplets(tmp_path) -> None:
    stack, screen, triplets = _cut(seed=5)
    result = tile_to_store(
        StackSource(stack, BANDS),
        screen,
        tmp_path,
        "whole",
        BANDS,
        TilingSettings(seed=5, min_valid_fraction=0.5),
    )
    written = read_shard(tmp_path, "whole")
    # the store keeps reflectance as whole DN: within half a DN of the cut
    np.testing.assert_allclose(written["negative"], triplets.negative, rtol=0, atol=0.501e-4)
    table = pd.read_csv(result.shards[0] / "patches.csv")
    assert table["negative_row"].tolist() == triplets.patches["negative_row"].tolist()


def test_the_codec_setting_starts_a_store_and_a_started_store_keeps_its_own(tmp_path) -> None:
    stack, screen, triplets = _cut(seed=5)

    def tile(shard: str, codec: str | None) -> None:
        settings = TilingSettings(seed=5, min_valid_fraction=0.5, codec=codec)
        tile_to_store(StackSource(stack, BANDS), screen, tmp_path, shard, BANDS, settings)

    tile("a", "zstd-3")
    tile("b", None)  # the default would be another codec: the store keeps zstd-3
    assert read_info(tmp_path).codec == "zstd-3"
    for shard in ("a", "b"):
        (compressor,) = zarr.open_group(tmp_path / "shards" / shard, mode="r")["anchor"].compressors
        assert type(compressor).__name__ == "ZstdCodec"
    np.testing.assert_array_equal(
        read_shard(tmp_path, "a")["anchor"], read_shard(tmp_path, "b")["anchor"]
    )


def test_an_all_cloudy_region_writes_an_empty_valid_shard(tmp_path) -> None:
    stack = synthetic_stack(size=64, dates=2, changed=None)
    stack["valid"][:] = False
    screen = screen_windows(stack, window=32, min_valid_fraction=0.9)
    assert not screen["unchanged"].any()
    result = tile_to_store(StackSource(stack, BANDS), screen, tmp_path, "cloudy", BANDS)
    assert result.triplets == 0 and shard_ids(tmp_path) == ["cloudy"]
    assert len(pd.read_csv(result.shards[0] / "patches.csv")) == 0


# --- straight from COGs: the real 29RKH tile --------------------------------------------------


def _real_scene(folder: Path, bands: list[str]) -> CogScene:
    item = json.loads((folder / "S2A_29RKH_20200219_0_L2A.json").read_text())
    cloud_prefix = item["assets"]["red"]["href"].rsplit("/", 1)[0] + "/"
    return CogScene.from_item(item, bands, [(cloud_prefix, str(folder.resolve()) + "/")])


# 12 km of the tile on a 10 m grid, its corner on the 600 m pixels of the downsampled 60 m band.
REAL_GRID = Grid(32629, Affine(10.0, 0.0, 235980.0, 0.0, -10.0, 2764020.0), 1200, 1200)


def test_cog_stack_matches_gdal_nearest_on_the_real_tile(real_data) -> None:
    folder = real_data("s2_l2a_cog_29RKH")
    bands = ["B01", "B04", "B05", "B8A"]  # 60, 10, 20, 20 m (stored 10x coarser)
    scene = _real_scene(folder, bands)
    assert scene.date == "2020-02-19" and scene.offset == 0.0  # baseline 02.14: no offset
    with CogStack([scene], bands, grid=REAL_GRID) as source:
        strip = source.read_rows(300, 700, 0)
        out = np.empty((len(bands), 256, 256), np.float32)
        valid = strip.crop(50, 410, out)
        fractions = source.valid_fraction(256)
    for i, name in enumerate(bands):
        dn, _ = read_asset(scene.bands[name], REAL_GRID, Resampling.nearest)
        expected = dn[350:606, 410:666].astype(np.float32) * np.float32(1e-4)
        np.testing.assert_allclose(out[i], expected, rtol=1e-6)
    scl, _ = read_asset(scene.scl, REAL_GRID, Resampling.nearest)
    np.testing.assert_array_equal(valid, ~np.isin(scl[350:606, 410:666], SCL_INVALID_DEFAULT))
    assert fractions.shape == (1, 4, 4) and 0.5 < fractions.mean() <= 1.0


@pytest.mark.parametrize("size", [240, 256])  # whole SCL pixels (stored 200 m here), or not
def test_cog_valid_fraction_equals_the_share_on_the_grid(real_data, size) -> None:
    scene = _real_scene(real_data("s2_l2a_cog_29RKH"), ["B04"])
    cloudy = replace(REAL_GRID, transform=Affine(10.0, 0.0, 259380.0, 0.0, -10.0, 2800020.0))
    with CogStack([scene], ["B04"], grid=cloudy) as source:  # a fifth under cloud
        fractions = source.valid_fraction(size)
    scl, _ = read_asset(scene.scl, cloudy, Resampling.nearest)
    valid = ~np.isin(scl, SCL_INVALID_DEFAULT)
    n = cloudy.height // size
    naive = [
        [valid[r * size : (r + 1) * size, c * size : (c + 1) * size].mean() for c in range(n)]
        for r in range(n)
    ]
    np.testing.assert_array_equal(fractions[0], naive)
    assert 0.0 < fractions.min() < fractions.max() <= 1.0


@pytest.mark.parametrize("offset", [0.0, -0.1])  # processing baselines 02.14 and 04.00
def test_cog_crops_as_store_integers_equal_the_encoded_reflectance(real_data, offset) -> None:
    bands = ["B01", "B04", "B05", "B8A"]
    scene = replace(_real_scene(real_data("s2_l2a_cog_29RKH"), bands), offset=offset)
    with CogStack([scene], bands, grid=REAL_GRID) as source:
        floats = np.empty((len(bands), 250, 250), np.float32)  # not whole 20 or 60 m pixels
        integers = np.empty(floats.shape, np.uint16)
        valid = source.read_rows(300, 700, 0).crop(53, 407, floats)
        strip = source.read_rows(300, 700, 0, np.uint16)
        np.testing.assert_array_equal(strip.crop(53, 407, integers), valid)
        with pytest.raises(CogStackError, match="read for uint16 crops, not float32"):
            strip.crop(53, 407, floats)
    np.testing.assert_array_equal(integers, ENCODINGS["reflectance"].encode(floats))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, bool, np.uint8])
@pytest.mark.parametrize(
    ("k", "y", "x", "height"),
    [(1, 3, 4, 37), (2, 0, 0, 38), (2, 0, 0, 37), (2, 1, 3, 37), (4, 8, 5, 36), (6, 5, 2, 37),
     (6, 12, 7, 36)],
)  # fmt: skip
def test_upsampled_repeats_each_native_pixel_k_by_k(dtype, k, y, x, height) -> None:
    native = (np.arange(60 * 60).reshape(60, 60) % 7).astype(dtype) * dtype(3)
    naive = np.kron(native, np.ones((k, k), dtype))[y : y + height, x : x + 41]
    np.testing.assert_array_equal(upsampled(native, k, y, x, height, 41), naive)
    # Into a view that is not contiguous: the rows cannot be written k at a time through it.
    out = np.zeros((height, 2, 41), dtype)[:, 1]
    np.testing.assert_array_equal(upsampled_into(out, native, k, y, x), naive)


@pytest.mark.parametrize("shift", [1000, -1000, 0])
def test_as_stored_shifts_the_dn_as_wide_integers_would(shift) -> None:
    native = np.random.default_rng(0).integers(1000, 64535, (50, 50), dtype=np.uint16)
    naive = native.astype(np.int64) + shift
    np.testing.assert_array_equal(as_stored(native.copy(), shift, np.uint16), naive)
    np.testing.assert_array_equal(as_stored(native, shift, np.int32), naive)


@pytest.mark.parametrize(("dn", "shift", "kept"), [(65535, 1000, 65535), (500, -1000, 0)])
def test_a_dn_the_shift_would_carry_out_of_the_dtype_is_held_at_its_end(dn, shift, kept) -> None:
    native = np.array([[dn, 20000]], np.uint16)  # a saturated pixel beside a bright one
    np.testing.assert_array_equal(as_stored(native, shift, np.uint16), [[kept, 20000 + shift]])


def test_real_tile_cogs_into_the_patch_store(tmp_path, real_data) -> None:
    folder = real_data("s2_l2a_cog_29RKH")
    scene = _real_scene(folder, BANDS)
    later = replace(scene, date="2020-02-24")  # the same files as a second date
    with CogStack([scene, later], BANDS, grid=REAL_GRID, region="29RKH", tile="29RKH") as source:
        result = tile_to_store(
            source,
            all_windows(source.grid, 128),
            tmp_path,
            "rkh",
            BANDS,
            TilingSettings(min_valid_fraction=0.5, max_pairs_per_window=1, strip_rows=3),
        )
    assert len(result.shards) == 3 and result.triplets > 0
    dataset = TripletDataset(tmp_path, BANDS)
    table = dataset.patches
    assert (table.crs == "EPSG:32629").all() and (table.tile == "29RKH").all()
    assert set(table.anchor_date) | set(table.positive_date) == {"2020-02-19", "2020-02-24"}
    sample = dataset[0]
    # The same files at both dates: the positive is the anchor; a desert's reflectance range.
    assert torch.equal(sample["anchor"], sample["positive"])
    assert not torch.equal(sample["anchor"], sample["negative"])
    assert 0.02 < float(sample["anchor"].median()) < 0.8
    # The same store through float reflectance (a source that cannot give the integers).
    with CogStack([scene, later], BANDS, grid=REAL_GRID, region="29RKH", tile="29RKH") as source:
        source.encoding = None
        tile_to_store(
            source,
            all_windows(source.grid, 128),
            tmp_path / "floats",
            "rkh",
            BANDS,
            TilingSettings(min_valid_fraction=0.5, max_pairs_per_window=1, strip_rows=3),
        )
    for shard in result.shards:
        for role in ("anchor", "positive", "negative"):
            np.testing.assert_array_equal(
                zarr.open_group(shard, mode="r")[role][:],
                zarr.open_group(tmp_path / "floats" / "shards" / shard.name, mode="r")[role][:],
            )


def test_a_stack_is_read_for_float_crops_only() -> None:
    source = StackSource(synthetic_stack(size=32, dates=2), BANDS)
    assert source.read_rows(0, 8, 0, np.float32).reflectance.dtype.kind == "f"
    with pytest.raises(ValueError, match="cut into float reflectance, not uint16"):
        source.read_rows(0, 8, 0, np.uint16)


def test_a_cog_off_the_grid_is_refused_with_the_reason(real_data) -> None:
    folder = real_data("s2_l2a_cog_29RKH")
    scene = _real_scene(folder, ["B04"])
    shifted = Grid(32629, REAL_GRID.transform @ Affine.translation(0.5, 0), 1200, 1200)
    with pytest.raises(CogStackError, match="pixel edges"), CogStack([scene], ["B04"], shifted):
        pass
    with pytest.raises(CogStackError, match=r"no COG for band\(s\) \['B02'\]"):
        CogStack([scene], ["B02"])
