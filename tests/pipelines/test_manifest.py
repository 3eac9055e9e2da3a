"""The per-shard triplet manifest: footprints in EPSG:4326, dates, STAC item ids, valid shares and
change scores, written as GeoParquet with reproducible bytes."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import shapely

from matter_model.patch_store import read_patches
from pipelines.change_screen import screen_windows
from pipelines.manifest import (
    ManifestError,
    items_by_date,
    read_manifest,
    triplet_manifest,
    write_manifest,
)
from pipelines.tiling import StackSource, tile_to_store
from tests.pipelines.stacks import BANDS, synthetic_stack


def items_of(dates: list[str], tiles: tuple[str, ...] = ("31TCJ",)) -> list[dict]:
    """Minimal STAC items: one per date and tile."""
    return [
        {"id": f"S2_{tile}_{d}", "properties": {"datetime": f"{d}T10:00:00Z"}}
        for d in dates
        for tile in tiles
    ]


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    stack = synthetic_stack(size=128, dates=3, changed=(56, 80, 14, 12))
    screen = screen_windows(stack, window=32, threshold=1.5, min_valid_fraction=0.5)
    store = tmp_path_factory.mktemp("store")
    tile_to_store(StackSource(stack, BANDS), screen, store, "synthetic__2024-04-01", BANDS)
    patches = read_patches(store).drop(columns=["shard", "index_in_shard"])
    dates = [str(t)[:10] for t in stack.time.values.astype("datetime64[D]")]
    return patches, screen, items_of(dates, ("31TCJ", "31TDJ"))


def test_manifest_rows_follow_the_patch_table(shard) -> None:
    patches, screen, items = shard
    manifest = triplet_manifest(patches, "s", {"synthetic": screen}, {"synthetic": items})
    assert len(manifest) == len(patches) > 0
    assert manifest.crs.to_epsg() == 4326
    assert list(manifest["index_in_shard"]) == list(range(len(patches)))
    first = manifest.iloc[0]
    assert first["anchor_items"] == [
        f"S2_31TCJ_{first['anchor_date']}",
        f"S2_31TDJ_{first['anchor_date']}",
    ]
    assert first["negative_items"][0].endswith(first["negative_date"])
    keyed = screen.set_index(["row", "col"])
    assert first["change_score"] == keyed.loc[(first["window_row"], first["window_col"]), "score"]
    assert (manifest["change_score"] < 1.5).all()  # only unchanged windows are tiled
    assert manifest["negative_change_score"].notna().all()
    # the footprint is the window's bbox brought to lon / lat
    utm = gpd.GeoSeries([shapely.box(*patches.iloc[0][["minx", "miny", "maxx", "maxy"]])])
    expected = utm.set_crs(patches.iloc[0]["crs"]).to_crs(4326).iloc[0]
    assert manifest.geometry.iloc[0].equals_exact(expected, 1e-9)


def test_manifest_bytes_are_reproducible(shard, tmp_path: Path) -> None:
    patches, screen, items = shard
    manifest = triplet_manifest(patches, "s", {"synthetic": screen}, {"synthetic": items})
    digest = write_manifest(tmp_path / "a" / "m.parquet", manifest)
    assert write_manifest(tmp_path / "b" / "m.parquet", manifest) == digest
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.parquet"]
    back = read_manifest(tmp_path / "a" / "m.parquet")
    assert back.crs.to_epsg() == 4326 and len(back) == len(manifest)
    assert list(back["anchor_items"].iloc[0]) == manifest["anchor_items"].iloc[0]


def test_an_empty_shard_has_an_empty_manifest(shard, tmp_path: Path) -> None:
    patches, screen, items = shard
    manifest = triplet_manifest(patches.iloc[:0], "s", {"synthetic": screen}, {})
    write_manifest(tmp_path / "m.parquet", manifest)
    assert len(read_manifest(tmp_path / "m.parquet")) == 0


def test_a_date_without_items_is_named(shard) -> None:
    patches, screen, items = shard
    date = patches["anchor_date"].iloc[0]
    kept = [it for it in items if not it["properties"]["datetime"].startswith(date)]
    with pytest.raises(ManifestError, match=f"region 'synthetic' was acquired on {date}"):
        triplet_manifest(patches, "s", {"synthetic": screen}, {"synthetic": kept})


def test_a_window_off_the_screen_is_named(shard) -> None:
    patches, screen, items = shard
    with pytest.raises(ManifestError, match="not in its change screen"):
        triplet_manifest(patches, "s", {"synthetic": screen.iloc[:1]}, {"synthetic": items})


def test_items_by_date_groups_tiles() -> None:
    items = items_of(["2024-05-10", "2024-05-15"], ("B", "A"))
    assert items_by_date(items) == {
        "2024-05-10": ["S2_A_2024-05-10", "S2_B_2024-05-10"],
        "2024-05-15": ["S2_A_2024-05-15", "S2_B_2024-05-15"],
    }
