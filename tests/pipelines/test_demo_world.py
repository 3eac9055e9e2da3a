"""The synthetic Sentinel-2 L2A demo world: layout, STAC metadata, determinism, truth."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from pipelines.bands import SCL, SPECTRAL_BANDS
from pipelines.demo_world import TINY_SPEC, Material, generate_demo_world
from pipelines.demo_world import generate as generate_module
from pipelines.demo_world.materials import SPECTRA

EARTH_SEARCH_KEYS = {b.earth_search_key for b in (*SPECTRAL_BANDS, SCL)}


@pytest.fixture(scope="module")
def world(tiny_world: Path) -> tuple[Path, dict]:
    """The session's tiny demo world (conftest) and its manifest."""
    return tiny_world, json.loads((tiny_world / "manifest.json").read_text())


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def href_path(href: str) -> Path:
    assert href.startswith("file://")
    return Path(url2pathname(urlparse(href).path))


def items_by_id(root: Path) -> dict[str, dict]:
    features = json.loads((root / "items.json").read_text())["features"]
    return {item["id"]: item for item in features}


def test_files_and_stac_metadata(world: tuple[Path, dict]) -> None:
    root, manifest = world
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert manifest["collection"] == "sentinel-2-l2a"
    collection = json.loads((root / "collection.json").read_text())
    assert collection["type"] == "Collection"
    assert collection["id"] == "sentinel-2-l2a"
    assert collection["license"] and collection["description"]
    items_json = json.loads((root / "items.json").read_text())
    assert items_json["type"] == "FeatureCollection"
    items = items_by_id(root)
    assert len(items) == len(TINY_SPEC.regions) * len(TINY_SPEC.dates)
    (ext_minx, ext_miny, ext_maxx, ext_maxy) = collection["extent"]["spatial"]["bbox"][0]

    for region in manifest["regions"]:
        assert set(region["item_ids"]) == set(TINY_SPEC.dates)
        for i, date in enumerate(TINY_SPEC.dates):
            item = items[region["item_ids"][date]]
            props = item["properties"]
            assert item["stac_version"] == "1.0.0"
            assert item["collection"] == "sentinel-2-l2a"
            assert item["id"].endswith(f"_{date.replace('-', '')}_0_L2A")
            assert props["datetime"].startswith(date) and props["datetime"].endswith("Z")
            assert props["proj:epsg"] == region["epsg"] and isinstance(props["proj:epsg"], int)
            assert props["grid:code"] == region["grid_code"]
            assert props["constellation"] == "sentinel-2"
            assert props["s2:processing_baseline"] == ("03.01" if i == 0 else "05.10")
            assert 0 <= props["eo:cloud_cover"] <= 100
            minx, miny, maxx, maxy = item["bbox"]
            assert ext_minx <= minx < maxx <= ext_maxx and ext_miny <= miny < maxy <= ext_maxy
            assert item["geometry"]["type"] == "Polygon"
            assert set(item["assets"]) == EARTH_SEARCH_KEYS
            for key, asset in item["assets"].items():
                path = href_path(asset["href"])
                assert path.is_file() and path.is_relative_to(root)
                with rasterio.open(path) as src:
                    assert src.crs.to_epsg() == region["epsg"]
                    assert list(src.shape) == asset["proj:shape"]
                    assert list(src.transform)[:6] == asset["proj:transform"]
                raster_band = asset["raster:bands"][0]
                if key == "scl":
                    assert raster_band["data_type"] == "uint8"
                else:
                    assert raster_band["scale"] == 0.0001
                    assert raster_band["offset"] == (0 if i == 0 else -0.1)
        for rel in [*region["truth"]["materials"].values(), *region["truth"]["change"].values()]:
            assert (root / rel).is_file()

    wrong = [
        item["id"]
        for item in items.values()
        if item["properties"]["earthsearch:boa_offset_applied"]
        != (item["properties"]["s2:processing_baseline"] >= "04.00")
    ]
    assert wrong == manifest["boa_offset_flag_wrong"] and len(wrong) == 1


def test_regions_in_different_utm_zones(world: tuple[Path, dict]) -> None:
    _, manifest = world
    epsgs = [region["epsg"] for region in manifest["regions"]]
    assert len(set(epsgs)) == len(epsgs) == 2


def test_deterministic(world: tuple[Path, dict], tmp_path: Path) -> None:
    root, manifest = world
    again = generate_demo_world(tmp_path / "again", TINY_SPEC)
    assert {k: v for k, v in again.items() if k != "root_uri"} == {
        k: v for k, v in manifest.items() if k != "root_uri"
    }
    tifs = sorted(p.relative_to(root) for p in root.rglob("*.tif"))
    assert tifs == sorted(
        p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*.tif")
    )
    for rel in tifs:
        np.testing.assert_array_equal(read(root / rel), read(tmp_path / "again" / rel))


def test_idempotent_rerun_does_not_rewrite(world: tuple[Path, dict]) -> None:
    root, manifest = world
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    start = time.perf_counter()
    assert generate_demo_world(root, TINY_SPEC) == manifest
    assert time.perf_counter() - start < 0.5
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    def failing_write(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls > 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(generate_module, "write_cog", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_world(tmp_path / "world", TINY_SPEC)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_demo_world(tmp_path / "world", TINY_SPEC)


@pytest.mark.parametrize("date_index", range(len(TINY_SPEC.dates)))
def test_scale_and_offset_recover_reflectance(world: tuple[Path, dict], date_index: int) -> None:
    """Clear water far from its shores reads back as spectrum x gain + haze, per baseline."""
    root, manifest = world
    items = items_by_id(root)
    band_index = {b.name: i for i, b in enumerate(SPECTRAL_BANDS)}
    for region in manifest["regions"]:
        date = region["dates"][date_index]
        item = items[region["item_ids"][date]]
        truth = read(root / region["truth"]["materials"][date])
        scl = np.kron(read(href_path(item["assets"]["scl"]["href"])), np.ones((2, 2), np.uint8))
        clear_water = ndimage.binary_erosion(truth == Material.WATER, iterations=3) & (scl == 6)
        assert clear_water.sum() >= 20
        atmosphere = region["atmosphere"][date]
        for name in ("B02", "B03", "B04", "B08"):
            asset = item["assets"][
                next(b.earth_search_key for b in SPECTRAL_BANDS if b.name == name)
            ]
            raster_band = asset["raster:bands"][0]
            dn = read(href_path(asset["href"])).astype(np.float64)
            reflectance = dn * raster_band["scale"] + raster_band["offset"]
            b = band_index[name]
            expected = SPECTRA[Material.WATER][b] * atmosphere["gain"][b] + atmosphere["haze"][b]
            assert reflectance[clear_water].mean() == pytest.approx(expected, abs=0.003)


def test_change_truth(world: tuple[Path, dict]) -> None:
    root, manifest = world
    dates = TINY_SPEC.dates
    for region in manifest["regions"]:
        assert 3 <= len(region["changes"]) <= 4
        truth = region["truth"]
        maps = {d: read(root / truth["materials"][d]) for d in dates}
        first_change = min(dates.index(c["from_date"]) for c in region["changes"])
        assert first_change == 1
        assert {dates.index(c["from_date"]) % 2 for c in region["changes"]} == {1}
        assert not read(root / truth["change"][f"{dates[1]}_{dates[2]}"]).any()
        for i, date_i in enumerate(dates):
            for date_j in dates[i + 1 :]:
                change = read(root / truth["change"][f"{date_i}_{date_j}"])
                np.testing.assert_array_equal(change, maps[date_i] != maps[date_j])
                for planted in region["changes"]:
                    r0, c0, r1, c1 = planted["bounds_px"]
                    spans = date_i < planted["from_date"] <= date_j
                    assert change[r0:r1, c0:c1].any() == spans
                    if spans:
                        material_to = Material[planted["material_to"].upper()]
                        assert (maps[date_j][r0:r1, c0:c1] == material_to).all()


def test_cloud_cover_matches_scl(world: tuple[Path, dict]) -> None:
    root, manifest = world
    items = items_by_id(root)
    for region in manifest["regions"]:
        covers = []
        for date in region["dates"]:
            item = items[region["item_ids"][date]]
            scl = read(href_path(item["assets"]["scl"]["href"]))
            from_scl = np.isin(scl, [8, 9, 10]).mean() * 100
            assert item["properties"]["eo:cloud_cover"] == pytest.approx(from_scl, abs=0.5)
            assert set(np.unique(scl)) <= {3, 4, 5, 6, 8, 9, 10}
            covers.append(from_scl)
        assert min(covers) < 5
        assert 15 <= max(covers) <= 35


def test_shifts_recorded(world: tuple[Path, dict]) -> None:
    _, manifest = world
    for region in manifest["regions"]:
        shifts = [region["shifts_px"][d] for d in region["dates"]]
        assert shifts[0] == [0.0, 0.0]
        assert all(abs(v) <= TINY_SPEC.max_shift_px for s in shifts for v in s)
        assert any(abs(v) > 0.05 for s in shifts[1:] for v in s)
