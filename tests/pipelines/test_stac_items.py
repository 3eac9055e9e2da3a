"""Real published item collections and paged results of both providers, read through our band
vocabulary, reflectance offset, MGRS tile and usable-item split (``../shared/data/stac``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from matter_model.bands import MATTER_BANDS
from pipelines.bands import asset_key
from pipelines.stac import item_mgrs_tile
from pipelines.stac.items import (
    BOA_OFFSET,
    item_epsg,
    reflectance_offset,
    split_usable,
    unusable_reason,
)

# (file under ../shared/data/stac, provider, item count)
COLLECTIONS = [
    ("rustac/two-sentinel-2-items.json", "planetary-computer", 2),
    ("rustac/earth-search-sentinel-2-c1-l2a-item-collection.json", "earth-search", 10),
    ("rustac/search-page-1.json", "planetary-computer", 1),
    ("rustac/search-page-2.json", "planetary-computer", 1),
    ("rustac/items-page-1.json", "planetary-computer", 1),
    ("rustac/items-page-2.json", "planetary-computer", 1),
    ("odc-stac/site1-20200606-tall-strip-africa.geojson", "planetary-computer", 9),
    ("odc-stac/site2-2020_jun_jul-35MNM.geojson", "planetary-computer", 13),
    (
        "odc-stac/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json",
        "planetary-computer",
        1,
    ),
    ("stac-geoparquet/sentinel-2-l2a-pc.json", "planetary-computer", 4),
]
RED_KEY = {"planetary-computer": "B04", "earth-search": "red"}


def _items(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return data
    return data["features"] if data["type"] == "FeatureCollection" else [data]


@pytest.mark.parametrize(("name", "provider", "count"), COLLECTIONS)
def test_real_items_read_through_one_band_vocabulary(
    real_data: Callable[..., Path], name: str, provider: str, count: int
) -> None:
    items = _items(real_data("stac", name))
    assert len(items) == count
    usable, skipped = split_usable(items)
    assert (len(usable), skipped) == (count, [])
    for item in items:
        assert asset_key(item, "B04") == RED_KEY[provider]
        assert {asset_key(item, b) for b in MATTER_BANDS} <= set(item["assets"])
        assert 32601 <= item_epsg(item) <= 32760  # a UTM zone, north or south
        major = int(item["properties"]["s2:processing_baseline"].split(".")[0])
        assert reflectance_offset(item) == (BOA_OFFSET if major >= 4 else 0.0)
        assert item_mgrs_tile(item) == item["id"].split("_T")[-1][:5]  # the tile in the id


def test_both_providers_name_the_same_tile_and_band_differently(real_data) -> None:
    pc = _items(real_data("stac", "rustac", "two-sentinel-2-items.json"))[0]
    es = _items(real_data("stac", "rustac", "earth-search-sentinel-2-c1-l2a-item-collection.json"))[
        0
    ]
    assert item_mgrs_tile(pc) == item_mgrs_tile(es) == "13TDE"
    assert "s2:mgrs_tile" in pc["properties"] and "mgrs:grid_square" in es["properties"]
    pc_red, es_red = pc["assets"][asset_key(pc, "B04")], es["assets"][asset_key(es, "B04")]
    assert pc_red["href"].endswith("_B04_10m.tif") and es_red["href"].endswith("/B04.tif")


def test_the_offset_follows_the_baseline_not_the_earth_search_flag(real_data) -> None:
    item = json.loads(real_data("s2_l2a_cog_29RKH", "S2A_29RKH_20200219_0_L2A.json").read_text())
    props = item["properties"]
    assert asset_key(item, "B04") == "red"
    for baseline, offset in (("02.14", 0.0), ("04.00", BOA_OFFSET), ("05.10", BOA_OFFSET)):
        for flag in (True, False):
            stated = {**item, "properties": {**props, "s2:processing_baseline": baseline}}
            stated["properties"]["earthsearch:boa_offset_applied"] = flag
            assert reflectance_offset(stated) == offset


def test_an_earth_search_v0_item_without_baseline_is_skipped_with_its_reason(real_data) -> None:
    """Earth Search v0 items record no processing baseline, so their offset is unknown."""
    item = _items(real_data("stac", "odc-stac", "S2A_28QCH_20200714_0_L2A.json"))[0]
    assert asset_key(item, "B04") == "B04" and item_epsg(item) == 32628
    assert "s2:processing_baseline" in unusable_reason(item)


def test_items_missing_bands_or_projection_are_skipped_and_counted(real_data, caplog) -> None:
    good, no_scl, no_proj = _items(real_data("stac", "stac-geoparquet", "sentinel-2-l2a-pc.json"))[
        :3
    ]
    del no_scl["assets"]["SCL"]
    no_proj["properties"].pop("proj:epsg")
    usable, skipped = split_usable([good, no_scl, no_proj])
    assert usable == [good]
    assert [(s.item_id, s.reason) for s in skipped] == [
        (no_scl["id"], "no asset for bands SCL"),
        (no_proj["id"], "carries neither proj:epsg nor an EPSG proj:code"),
    ]
    assert sum("skipping STAC item" in r.message for r in caplog.records) == 2


def test_the_stac_items_asset_counts_skipped_items_in_its_metadata(
    tiny_world: Path, tmp_path: Path
) -> None:
    """The demo world's Lombardy items, one of the July window's two without its SCL asset."""
    import dagster as dg

    from assets import imagery
    from assets.resources import DataStore, StacApi
    from pipelines.stac import StacServer

    collection = json.loads((tiny_world / "items.json").read_text())
    by_id = {f["id"]: f for f in collection["features"]}
    del by_id["S2B_32TNR_20240719_0_L2A"]["assets"]["scl"]
    (tmp_path / "items.json").write_text(json.dumps(collection))
    with StacServer([tiny_world / "collection.json", tmp_path / "items.json"]) as server:
        result = dg.materialize(
            [imagery.stac_items],
            partition_key="lombardy|2024-07-01",
            resources={
                "store": DataStore(root=str(tmp_path)),
                "stac": StacApi(endpoint=server.url),
            },
        )
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["items"].value == 1
    assert metadata["items_skipped"].value == 1
    assert metadata["skipped_reasons"].value == {
        "S2B_32TNR_20240719_0_L2A": "no asset for bands SCL"
    }
    written = json.loads((tmp_path / "items" / "lombardy" / "2024-07-01.json").read_text())
    assert [f["id"] for f in written["features"]] == ["S2A_32TNR_20240823_0_L2A"]


def test_an_asset_without_href_is_skipped_naming_the_band(tiny_world: Path) -> None:
    features = json.loads((tiny_world / "items.json").read_text())["features"]
    item = json.loads(json.dumps(features[0]))
    key = asset_key(item, "B04")
    item["assets"][key].pop("href")
    usable, skipped = split_usable([item, features[1]])
    assert [it["id"] for it in usable] == [features[1]["id"]]
    assert skipped[0].reason == "no href for the assets of bands B04"
