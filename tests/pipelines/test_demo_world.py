"""The synthetic Sentinel-2 L2A demo world: layout, STAC metadata, determinism, truth, and the
phenology that changes unchanged ground between dates."""

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
from pipelines.demo_world import TINY_SPEC, Material, generate_demo_world, phenology
from pipelines.demo_world import generate as generate_module
from pipelines.demo_world.generate import CHANGE_KINDS
from pipelines.demo_world.materials import SPECTRA, URBAN_SURFACES

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


def reflectance(item: dict, band_name: str) -> np.ndarray:
    """A 10 m band of an item as surface reflectance (scale and offset applied)."""
    key = next(b.earth_search_key for b in SPECTRAL_BANDS if b.name == band_name)
    asset = item["assets"][key]
    raster_band = asset["raster:bands"][0]
    dn = read(href_path(asset["href"])).astype(np.float64)
    return dn * raster_band["scale"] + raster_band["offset"]


def clear_10m(item: dict) -> np.ndarray:
    """Pixels the item's SCL calls clear ground or water, on the 10 m grid."""
    scl = read(href_path(item["assets"]["scl"]["href"]))
    return np.kron(np.isin(scl, [4, 5, 6]), np.ones((2, 2), bool))


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
    """Clear water far from its shores reads back as the date's water spectrum (its recorded
    turbidity) x gain + haze, per baseline."""
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
        water = phenology.water_spectrum(region["surface"][date]["water_turbidity"])
        for name in ("B02", "B03", "B04", "B08"):
            b = band_index[name]
            expected = water[b] * atmosphere["gain"][b] + atmosphere["haze"][b]
            assert reflectance(item, name)[clear_water].mean() == pytest.approx(expected, abs=0.003)


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


def test_surface_conditions_recorded_per_date(world: tuple[Path, dict]) -> None:
    """Each date's conditions are in the manifest: its day, the sun of 10:30 solar time at the
    region's latitude (higher in June than in August), and turbidity and level that vary."""
    _, manifest = world
    for region in manifest["regions"]:
        surface = [region["surface"][d] for d in region["dates"]]
        assert [s["day_of_year"] for s in surface] == [
            phenology.day_of_year(d) for d in region["dates"]
        ]
        elevations = [s["sun_elevation_deg"] for s in surface]
        assert all(40 < e < 70 for e in elevations)
        assert elevations[1] > elevations[3] + 5  # mid-June vs late August
        assert all(100 < s["sun_azimuth_deg"] < 180 for s in surface)  # south-east, morning
        for key in ("water_turbidity", "water_level", "soil_moisture_mean"):
            values = [s[key] for s in surface]
            assert all(0 <= v <= 1 for v in values) and len(set(values)) == len(values)


def _unchanged_clear(root: Path, region: dict, items: dict, material: Material, a: int, b: int):
    """Interior pixels of ``material`` at dates a and b that the truth calls unchanged between
    them and that are clear at both: (mask, NDVI at a, NDVI at b)."""
    date_a, date_b = region["dates"][a], region["dates"][b]
    truth = region["truth"]
    unchanged = read(root / truth["change"][f"{date_a}_{date_b}"]) == 0
    same = (read(root / truth["materials"][date_a]) == material) & unchanged
    mask = ndimage.binary_erosion(same, iterations=2)
    ndvi = []
    for date in (date_a, date_b):
        item = items[region["item_ids"][date]]
        mask &= clear_10m(item)
        red, nir = reflectance(item, "B04"), reflectance(item, "B08")
        ndvi.append((nir - red) / (nir + red))
    return mask, ndvi[0], ndvi[1]


def test_phenology_changes_unchanged_fields(world: tuple[Path, dict]) -> None:
    """Fields whose material truth never changes still change between dates by a clear NDVI
    margin: maize greens up from bare soil, wheat ripens and is harvested and ploughed."""
    root, manifest = world
    items = items_by_id(root)
    for region in manifest["regions"]:
        maize, ndvi_may, ndvi_aug = _unchanged_clear(root, region, items, Material.CROP_MAIZE, 0, 3)
        assert maize.sum() >= 200
        assert np.median(ndvi_aug[maize] - ndvi_may[maize]) > 0.3
        wheat, ndvi_may, ndvi_aug = _unchanged_clear(root, region, items, Material.CROP_WHEAT, 0, 3)
        assert wheat.sum() >= 200
        assert np.median(ndvi_aug[wheat] - ndvi_may[wheat]) < -0.3
        # Within the first quarter too, the pair a change detector is evaluated on.
        maize, ndvi_may, ndvi_june = _unchanged_clear(
            root, region, items, Material.CROP_MAIZE, 0, 1
        )
        rise = ndvi_june[maize] - ndvi_may[maize]
        assert np.median(rise) > 0.1 and np.mean(rise > 0.2) > 0.2


def test_phenology_differs_per_parcel(world: tuple[Path, dict]) -> None:
    """Not one global factor: unchanged maize pixels of one pair of dates change by widely
    different amounts (parcels keep their own calendars)."""
    root, manifest = world
    items = items_by_id(root)
    for region in manifest["regions"]:
        maize, ndvi_may, ndvi_june = _unchanged_clear(
            root, region, items, Material.CROP_MAIZE, 0, 1
        )
        low, high = np.percentile(ndvi_june[maize] - ndvi_may[maize], [10, 90])
        assert high - low > 0.2


def _season_states(source: Material, doy: int, moisture: float) -> np.ndarray:
    """Every state ``source`` takes on day ``doy`` over a range of calendars (n, bands)."""
    n = 31
    shifts = np.linspace(-40, 40, n, dtype=np.float32)
    traits = phenology.Phenology(
        calendar_shift=shifts,
        tillage_delay=np.full(n, 10, np.float32),
        forest_shift=shifts[None, :],
        forest_stress=np.full((1, n), 0.45, np.float32),
        slope_east=np.zeros((1, n), np.float32),
        slope_north=np.zeros((1, n), np.float32),
        shore_distance=np.full((1, n), 99, np.float32),
    )
    conditions = phenology.Conditions(doy, 60.0, 140.0, np.full(n, moisture, np.float32), 0, 0)
    if source == Material.FOREST:
        return phenology.forest_spectra(traits, conditions, np.ones((1, n), bool)).T
    spectra = {
        Material.CROP_MAIZE: phenology.maize_spectra,
        Material.CROP_WHEAT: phenology.wheat_spectra,
        Material.BARE_SOIL: lambda _, c: phenology.soil_spectra(c.soil_moisture),
    }
    return spectra[source](traits, conditions)


def _target_states(target: Material) -> np.ndarray:
    wet = np.linspace(0, 1, 5, dtype=np.float32)
    if target == Material.BUILT_UP:
        return URBAN_SURFACES
    if target == Material.WATER:
        return np.stack([phenology.water_spectrum(float(t)) for t in wet])
    if target == Material.BARE_SOIL:
        return phenology.soil_spectra(wet)
    return SPECTRA[target][None, :]


def test_planted_targets_are_never_a_phenological_state() -> None:
    """A planted change is a change of material, not of season: whatever the calendar, day
    (April to October) and soil moisture, no state of a change's source material has the
    spectral shape of its target (angle above 0.05 rad, many times that of sensor noise),
    although the season moves the source much further than that (maize: 0.3 rad and more)."""
    for _, sources, target in CHANGE_KINDS:
        targets = _target_states(target)
        targets = targets / np.linalg.norm(targets, axis=1, keepdims=True)
        for source in sources:
            states = np.concatenate(
                [_season_states(source, doy, m) for doy in range(100, 300, 5) for m in (0, 1)]
            )
            states = states / np.linalg.norm(states, axis=1, keepdims=True)
            angles = np.arccos(np.clip(states @ targets.T, -1, 1))
            assert angles.min() > 0.05, (source, target)
    maize = _season_states(Material.CROP_MAIZE, 120, 0.5)[15:16]  # calendar shift 0
    grown = _season_states(Material.CROP_MAIZE, 220, 0.5)[15:16]
    cosine = (maize @ grown.T) / (np.linalg.norm(maize) * np.linalg.norm(grown))
    assert np.arccos(cosine.item()) > 0.3


def test_truth_changes_only_where_planted(world: tuple[Path, dict]) -> None:
    """Phenology never reaches the truth: between the first and the last date, when every field
    has changed its look, only the planted rectangles changed material."""
    root, manifest = world
    for region in manifest["regions"]:
        first, last = region["dates"][0], region["dates"][-1]
        change = read(root / region["truth"]["change"][f"{first}_{last}"]).astype(bool)
        planted = np.zeros(change.shape, bool)
        for c in region["changes"]:
            r0, c0, r1, c1 = c["bounds_px"]
            planted[r0:r1, c0:c1] = True
        assert change.any() and not change[~planted].any()
