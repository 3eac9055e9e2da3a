"""Generate the demo world: synthetic Sentinel-2 L2A COGs, STAC metadata and ground truth.

Each region is covered, on every date, by one tile on its UTM grid: the region plus a margin,
origin snapped to 60 m like real S2 tiles. Per date the surface is rendered on the 10 m grid
under that date's conditions (crop calendars per parcel, leaf-out and browning per forest stand,
soil moisture, river turbidity and level, the sun on the terrain: ``phenology``), shifted by a
known sub-pixel amount, seen through a different atmosphere, clouds and their shadows, with
sensor noise, then block-averaged to each band's native resolution and written as Earth Search
v1 style COGs. Ground truth (materials, changes) is on the unshifted 10 m grid: the conditions
of a date never change it, only the planted land-cover changes do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform, transform_bounds, transform_geom
from scipy import ndimage

from matter_model.atomic_io import atomic_directory
from pipelines.bands import SCL, SPECTRAL_BANDS
from pipelines.blocks import as_blocks
from pipelines.demo_world.materials import (
    CLOUD,
    MATERIAL_SCL,
    Material,
    Textures,
    make_textures,
    smooth_noise,
)
from pipelines.demo_world.phenology import (
    Conditions,
    Phenology,
    date_conditions,
    make_phenology,
    render_surface,
)

# Bump when the output changes for an unchanged spec, so that old worlds are regenerated.
GENERATOR_VERSION = 3
COLLECTION_ID = "sentinel-2-l2a"
STAC_VERSION = "1.0.0"
ITEM_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
]
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
BOA_OFFSET_BASELINE = "04.00"  # from this processing baseline on, L2A DN carry +1000
OLD_BASELINE, NEW_BASELINE = "03.01", "05.10"
DN_SCALE = 0.0001
NOISE_SIGMA = 0.002  # sensor noise, reflectance units
GRID_SNAP_M = 60
VEGETATION_NDVI = 0.4  # SCL: land above it is vegetation on that date


@dataclass(frozen=True)
class RegionSpec:
    """A square region: name, UTM EPSG code, centre (lon, lat), side in 10 m pixels."""

    name: str
    epsg: int
    center_lonlat: tuple[float, float]
    size_px: int


@dataclass(frozen=True)
class DemoWorldSpec:
    """Everything that determines the demo world's content; its hash names a generated world."""

    regions: tuple[RegionSpec, ...]
    dates: tuple[str, ...]  # ISO dates, ascending
    seed: int
    margin_px: int = 16
    cloud_fractions: tuple[float, ...] = (0.01, 0.25, 0.08, 0.15)  # per date, cycled
    max_shift_px: float = 0.6

    def spec_hash(self) -> str:
        """Stable hash of the spec and the generator version."""
        payload = json.dumps({"generator": GENERATOR_VERSION, "spec": asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


DEFAULT_SPEC = DemoWorldSpec(
    regions=(
        RegionSpec("lombardy", 32632, (9.9, 45.3), 384),
        RegionSpec("beauce", 32631, (1.6, 48.2), 384),
    ),
    dates=("2024-05-10", "2024-06-14", "2024-07-19", "2024-08-23"),
    seed=20240510,
)
TINY_SPEC = replace(
    DEFAULT_SPEC, regions=tuple(replace(r, size_px=96) for r in DEFAULT_SPEC.regions)
)
SPECS: dict[str, DemoWorldSpec] = {"default": DEFAULT_SPEC, "tiny": TINY_SPEC}


# ---------------------------------------------------------------------------------------------
# Grids


@dataclass(frozen=True)
class TileGrid:
    """The UTM tile of a region: bounds (minx, miny, maxx, maxy) in metres."""

    epsg: int
    region_bounds: tuple[float, float, float, float]
    tile_bounds: tuple[float, float, float, float]

    def shape(self, resolution_m: int = 10) -> tuple[int, int]:
        minx, miny, maxx, maxy = self.tile_bounds
        return round((maxy - miny) / resolution_m), round((maxx - minx) / resolution_m)

    def transform(self, resolution_m: int = 10) -> Affine:
        minx, _, _, maxy = self.tile_bounds
        return Affine(resolution_m, 0, minx, 0, -resolution_m, maxy)

    def region_window(self) -> tuple[int, int, int, int]:
        """The region within the tile on the 10 m grid: (row0, col0, row1, col1)."""
        tminx, _, _, tmaxy = self.tile_bounds
        minx, miny, maxx, maxy = self.region_bounds
        return (
            round((tmaxy - maxy) / 10),
            round((minx - tminx) / 10),
            round((tmaxy - miny) / 10),
            round((maxx - tminx) / 10),
        )


def tile_grid(region: RegionSpec, margin_px: int) -> TileGrid:
    """The region snapped to 60 m around its centre, and its tile with the margin added."""
    xs, ys = transform(
        "EPSG:4326", f"EPSG:{region.epsg}", [region.center_lonlat[0]], [region.center_lonlat[1]]
    )
    side = region.size_px * 10
    minx = round((xs[0] - side / 2) / GRID_SNAP_M) * GRID_SNAP_M
    maxy = round((ys[0] + side / 2) / GRID_SNAP_M) * GRID_SNAP_M
    region_bounds = (minx, maxy - side, minx + side, maxy)
    margin = margin_px * 10
    tile_bounds = (
        np.floor((region_bounds[0] - margin) / GRID_SNAP_M) * GRID_SNAP_M,
        np.floor((region_bounds[1] - margin) / GRID_SNAP_M) * GRID_SNAP_M,
        np.ceil((region_bounds[2] + margin) / GRID_SNAP_M) * GRID_SNAP_M,
        np.ceil((region_bounds[3] + margin) / GRID_SNAP_M) * GRID_SNAP_M,
    )
    return TileGrid(
        region.epsg,
        tuple(float(v) for v in region_bounds),
        tuple(float(v) for v in tile_bounds),
    )


def mgrs_square(epsg: int, lon: float, lat: float, easting: float, northing: float) -> tuple:
    """(utm_zone, latitude_band, grid_square) of the MGRS 100 km square holding a point."""
    if not 32601 <= epsg <= 32660:
        raise ValueError(f"demo world regions must be in a northern UTM zone, got EPSG:{epsg}")
    zone = epsg - 32600
    band = "CDEFGHJKLMNPQRSTUVWX"[min(int((lat + 80) // 8), 19)]
    column_sets = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")
    column = column_sets[zone % 3][int(easting // 100_000) - 1]
    row_letters = "ABCDEFGHJKLMNPQRSTUV"
    row = row_letters[(int(northing // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return zone, band, column + row


# ---------------------------------------------------------------------------------------------
# Scene layout and planted changes


def split_parcels(
    rng: np.random.Generator, shape: tuple[int, int], min_side: int, max_side: int
) -> tuple[np.ndarray, int]:
    """Label map of rectangular field parcels made by recursive random splits."""
    labels = np.zeros(shape, np.int32)
    stack = [(0, 0, shape[0], shape[1])]
    count = 0
    while stack:
        r0, c0, r1, c1 = stack.pop()
        h, w = r1 - r0, c1 - c0
        long_side = max(h, w)
        if long_side < 2 * min_side or (long_side <= max_side and rng.random() < 0.4):
            labels[r0:r1, c0:c1] = count
            count += 1
        elif h >= w:
            cut = int(rng.integers(r0 + min_side, r1 - min_side + 1))
            stack += [(r0, c0, cut, c1), (cut, c0, r1, c1)]
        else:
            cut = int(rng.integers(c0 + min_side, c1 - min_side + 1))
            stack += [(r0, c0, r1, cut), (r0, cut, r1, c1)]
    return labels, count


def layout_materials(
    rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, Textures]:
    """The base material map of a tile (fields, forest, a town, a river) and its textures."""
    size = min(shape)
    parcels, n_parcels = split_parcels(rng, shape, max(8, size // 20), max(24, size // 6))
    parcel_material = rng.choice(
        [Material.CROP_MAIZE, Material.CROP_WHEAT, Material.BARE_SOIL],
        size=n_parcels,
        p=[0.4, 0.35, 0.25],
    )
    materials = parcel_material[parcels].astype(np.uint8)

    forest = smooth_noise(rng, shape, size / 14)
    materials[forest > np.quantile(forest, 0.78)] = Material.FOREST

    town_h, town_w = (int(s * rng.uniform(0.25, 0.35)) for s in shape)
    r0 = int(rng.integers(0, shape[0] - town_h))
    c0 = int(rng.integers(0, shape[1] - town_w))
    materials[r0 : r0 + town_h, c0 : c0 + town_w] = Material.BUILT_UP

    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    along, across = (rows, cols) if rng.random() < 0.5 else (cols, rows)
    centre = size * rng.uniform(0.3, 0.7) + size * 0.08 * np.sin(
        2 * np.pi * along / (size * rng.uniform(0.6, 1.2)) + rng.uniform(0, 2 * np.pi)
    )
    half_width = max(4.0, size / 50)
    materials[np.abs(across - centre) < half_width] = Material.WATER
    return materials, make_textures(rng, parcels, n_parcels)


# (name, materials it happens on, material it becomes)
CHANGE_KINDS: tuple[tuple[str, tuple[Material, ...], Material], ...] = (
    ("clearcut", (Material.FOREST,), Material.BARE_SOIL),
    ("construction", (Material.CROP_MAIZE, Material.CROP_WHEAT), Material.BUILT_UP),
    ("flooding", (Material.BARE_SOIL,), Material.WATER),
    ("earthworks", (Material.CROP_MAIZE, Material.CROP_WHEAT), Material.EXCAVATION),
)


@dataclass(frozen=True)
class PlantedChange:
    """A rectangle (10 m tile pixels, end-exclusive) that becomes ``material_to`` from a date on."""

    kind: str
    material_from: Material  # the dominant material in the rectangle before
    material_to: Material
    from_index: int  # index of the first date showing the change
    bounds_px: tuple[int, int, int, int]  # row0, col0, row1, col1


def plan_changes(
    rng: np.random.Generator, base: np.ndarray, window: tuple[int, int, int, int], n_dates: int
) -> list[PlantedChange]:
    """3-4 non-overlapping changes inside the region (``window``, its pixel bounds), each where
    its source material dominates.

    Changes start on odd date indices (1, 3, ...), alternately: with two dates per time
    partition (quarter), every partition then holds a change between its own dates, and pairs
    that straddle two partitions (dates 1 and 2, ...) never differ.
    """
    wr0, wc0, wr1, wc1 = window
    region_side = min(wr1 - wr0, wc1 - wc0)
    min_side = max(6, min(20, region_side // 5))
    max_side = max(min_side, min(60, region_side // 3))
    taken = np.zeros(base.shape, bool)
    changes = []
    odd_dates = list(range(1, n_dates, 2)) or [0]
    for k, (kind, sources, target) in enumerate(CHANGE_KINDS[: int(rng.integers(3, 5))]):
        best, best_score = None, -1.0
        for _ in range(300):
            h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
            r0 = int(rng.integers(wr0, wr1 - h + 1))
            c0 = int(rng.integers(wc0, wc1 - w + 1))
            if taken[max(r0 - 3, 0) : r0 + h + 3, max(c0 - 3, 0) : c0 + w + 3].any():
                continue
            score = float(np.isin(base[r0 : r0 + h, c0 : c0 + w], sources).mean())
            if score > best_score:
                best, best_score = (r0, c0, r0 + h, c0 + w), score
        if best is None:
            continue
        r0, c0, r1, c1 = best
        taken[r0:r1, c0:c1] = True
        dominant = Material(int(np.bincount(base[r0:r1, c0:c1].ravel()).argmax()))
        changes.append(PlantedChange(kind, dominant, target, odd_dates[k % len(odd_dates)], best))
    return changes


def materials_on(base: np.ndarray, changes: list[PlantedChange], date_index: int) -> np.ndarray:
    """The material map on a date: the base map with the changes that happened by then."""
    out = base.copy()
    for change in changes:
        if change.from_index <= date_index:
            r0, c0, r1, c1 = change.bounds_px
            out[r0:r1, c0:c1] = change.material_to
    return out


# ---------------------------------------------------------------------------------------------
# Per-date observation: shift, atmosphere, clouds, noise


@dataclass
class Observation:
    """One date of one region, rendered on the 10 m grid."""

    reflectance: np.ndarray  # (bands, rows, cols) float32, top of canopy incl. atmosphere/clouds
    scl: np.ndarray  # (rows/2, cols/2) uint8
    shift_px: tuple[float, float]
    gain: np.ndarray
    haze: np.ndarray
    cloud_cover: float  # % of 20 m pixels in SCL 8, 9, 10
    scl_percentages: dict[int, float] = field(default_factory=dict)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping factor x factor blocks of the last two axes."""
    return as_blocks(array, factor).mean(axis=(-2, -1))


def cloud_fields(
    rng: np.random.Generator,
    shape: tuple[int, int],
    fraction: float,
    sun_deg: tuple[float, float] = (55.0, 143.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity (0-1, thin cirrus margins up to 0.25) and cloud-shadow strength (0-1).

    Shadows fall away from the sun (``sun_deg``: elevation, azimuth), longer when it is lower.
    """
    pad = 20
    size = min(shape)
    big = (shape[0] + 2 * pad, shape[1] + 2 * pad)
    noise = smooth_noise(rng, big, max(3.0, size / 14)) + 0.35 * smooth_noise(rng, big, 2.0)
    inner = noise[pad:-pad, pad:-pad]
    low = np.quantile(inner, 1 - fraction) if fraction > 0 else np.inf
    margin = 0.35 * inner.std()
    cirrus = 0.25 * np.clip((noise - low) / margin, 0, 1)
    thick = 0.75 * np.clip((noise - low - margin) / (0.6 * inner.std()), 0, 1)
    opacity = np.where(noise > low, cirrus + thick, 0.0)
    elevation, azimuth = np.radians(sun_deg)
    length = min(rng.uniform(10, 15) * np.tan(np.radians(55.0)) / np.tan(elevation), pad)
    dy, dx = round(length * np.cos(azimuth)), -round(length * np.sin(azimuth))  # rows: south
    shadow = (thick / 0.75)[pad - dy : pad - dy + shape[0], pad - dx : pad - dx + shape[1]]
    opacity = opacity[pad:-pad, pad:-pad]
    return opacity.astype(np.float32), (shadow * (1 - opacity)).astype(np.float32)


@dataclass(frozen=True)
class Scene:
    """What the ground of one date is: its material map, textures, traits and conditions."""

    materials: np.ndarray
    textures: Textures
    phenology: Phenology
    conditions: Conditions

    def surface(self) -> np.ndarray:
        return render_surface(self.materials, self.textures, self.phenology, self.conditions)


def observe(
    rng: np.random.Generator,
    scene: Scene,
    shift_px: tuple[float, float],
    cloud_fraction: float,
) -> Observation:
    """Render one date: surface, sub-pixel shift, atmosphere, clouds and shadows, noise, SCL."""
    wavelengths = np.array([b.center_wavelength_um for b in SPECTRAL_BANDS], np.float32)
    surface, materials = scene.surface(), scene.materials
    if shift_px != (0.0, 0.0):
        surface = np.stack(
            [ndimage.shift(band, shift_px, order=3, mode="nearest") for band in surface]
        )
        materials = ndimage.shift(materials, shift_px, order=0, mode="nearest")
    np.clip(surface, 0, None, out=surface)

    gain = np.clip(
        rng.uniform(0.9, 1.1) * (1 + rng.uniform(-0.04, 0.04, len(wavelengths))), 0.85, 1.15
    ).astype(np.float32)
    haze = (rng.uniform(0.0, 0.03) * (wavelengths[0] / wavelengths) ** 2).astype(np.float32)
    sun = (scene.conditions.sun_elevation_deg, scene.conditions.sun_azimuth_deg)
    opacity, shadow = cloud_fields(rng, materials.shape, cloud_fraction, sun)
    seen = surface * gain[:, None, None] + haze[:, None, None]
    seen *= 1 - 0.6 * shadow
    seen = (1 - opacity) * seen + opacity * CLOUD[:, None, None]
    seen += rng.normal(0.0, NOISE_SIGMA, seen.shape).astype(np.float32)

    scl = scene_classification(materials, ndvi(surface), opacity, shadow)
    counts = np.bincount(scl.ravel(), minlength=12) / scl.size * 100
    return Observation(
        reflectance=seen.astype(np.float32),
        scl=scl,
        shift_px=shift_px,
        gain=gain,
        haze=haze,
        cloud_cover=float(counts[8] + counts[9] + counts[10]),
        scl_percentages={c: float(counts[c]) for c in range(12)},
    )


def ndvi(reflectance: np.ndarray) -> np.ndarray:
    """(B08 - B04) / (B08 + B04) of a (bands, rows, cols) array in ``SPECTRAL_BANDS`` order."""
    names = [b.name for b in SPECTRAL_BANDS]
    red, nir = reflectance[names.index("B04")], reflectance[names.index("B08")]
    return (nir - red) / np.maximum(nir + red, 1e-6)


def scene_classification(
    materials: np.ndarray, ndvi: np.ndarray, opacity: np.ndarray, shadow: np.ndarray
) -> np.ndarray:
    """SCL at 20 m: majority surface class, overridden by cloud, cirrus and shadow.

    Land is vegetation (4) where its NDVI exceeds ``VEGETATION_NDVI`` on this date, else not
    vegetated (5): a field before emergence or after harvest is bare, as Sen2Cor sees it.
    """
    lookup = np.zeros(256, np.uint8)
    for material, scl_class in MATERIAL_SCL.items():
        lookup[material] = scl_class
    classes = lookup[materials]
    land = np.isin(classes, [4, 5])
    classes[land] = np.where(ndvi[land] > VEGETATION_NDVI, 4, 5)
    candidates = np.array([4, 5, 6], np.uint8)
    fractions = np.stack([block_mean((classes == c).astype(np.float32), 2) for c in candidates])
    scl = candidates[fractions.argmax(axis=0)]
    opacity20, shadow20 = block_mean(opacity, 2), block_mean(shadow, 2)
    scl[shadow20 >= 0.3] = 3
    scl[opacity20 > 0.02] = 10
    scl[opacity20 >= 0.3] = 8
    scl[opacity20 >= 0.6] = 9
    return scl


def to_dn(reflectance: np.ndarray, baseline: str) -> np.ndarray:
    """L2A digital numbers: reflectance x 10000, +1000 from baseline 04.00 on; 0 stays nodata."""
    offset = 1000 if baseline >= BOA_OFFSET_BASELINE else 0
    dn = np.round(reflectance.astype(np.float64) / DN_SCALE) + offset
    return np.clip(dn, 1, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# Files and STAC


def write_cog(path: Path, array: np.ndarray, affine: Affine, epsg: int) -> None:
    """Write a single-band COG (DEFLATE, predictor 2, nodata 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="COG",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype,
        crs=CRS.from_epsg(epsg),
        transform=affine,
        nodata=0,
        compress="DEFLATE",
        predictor=2,
        blocksize=256,
    ) as dst:
        dst.write(array, 1)


def band_asset(band_name: str, href: str, grid: TileGrid, baseline: str) -> dict:
    """An Earth Search v1 style asset for a spectral band."""
    spec = next(b for b in SPECTRAL_BANDS if b.name == band_name)
    key = spec.earth_search_key
    res = spec.resolution_m
    return {
        "href": href,
        "type": COG_TYPE,
        "title": f"{spec.description} - {res}m",
        "eo:bands": [
            {
                "name": key,
                "common_name": "rededge" if key.startswith("rededge") else key,
                "description": spec.description,
                "center_wavelength": spec.center_wavelength_um,
                "full_width_half_max": spec.full_width_half_max_um,
            }
        ],
        "gsd": res,
        "proj:shape": list(grid.shape(res)),
        "proj:transform": list(grid.transform(res))[:6],
        "raster:bands": [
            {
                "nodata": 0,
                "data_type": "uint16",
                "bits_per_sample": 15,
                "spatial_resolution": res,
                "scale": DN_SCALE,
                "offset": -0.1 if baseline >= BOA_OFFSET_BASELINE else 0,
            }
        ],
        "roles": ["data", "reflectance"],
    }


def scl_asset(href: str, grid: TileGrid) -> dict:
    """The Scene Classification Layer asset."""
    res = SCL.resolution_m
    return {
        "href": href,
        "type": COG_TYPE,
        "title": "Scene classification map (SCL)",
        "proj:shape": list(grid.shape(res)),
        "proj:transform": list(grid.transform(res))[:6],
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": res}],
        "roles": ["data", "reflectance"],
    }


def acquisition_time(date: str, lon: float) -> str:
    """About 10:30 local solar time, as UTC ISO with Z."""
    seconds = round((10.5 - lon / 15) * 3600)
    start = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
    return (start + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def lonlat_footprint(grid: TileGrid) -> tuple[dict, list[float]]:
    """The tile's footprint polygon and bbox in lon/lat."""
    minx, miny, maxx, maxy = grid.tile_bounds
    ring = [[minx, maxy], [maxx, maxy], [maxx, miny], [minx, miny], [minx, maxy]]
    crs = f"EPSG:{grid.epsg}"
    geometry = transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    geometry = {"type": "Polygon", "coordinates": [[list(p) for p in geometry["coordinates"][0]]]}
    return geometry, list(transform_bounds(crs, "EPSG:4326", *grid.tile_bounds, densify_pts=21))


def collection_document(items: list[dict]) -> dict:
    """The STAC Collection covering all items."""
    bboxes = np.array([item["bbox"] for item in items])
    times = sorted(item["properties"]["datetime"] for item in items)
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": COLLECTION_ID,
        "title": "Sentinel-2 Level-2A (synthetic demo world)",
        "description": (
            "Synthetic Sentinel-2 L2A scenes generated deterministically by the matter-s2 demo "
            "world: Earth Search v1 asset keys and metadata, real UTM grids, clouds and SCL, "
            "illumination changes and sub-pixel shifts between dates, planted land-cover "
            "changes with ground truth. Not real observations."
        ),
        "license": "CC0-1.0",
        "keywords": ["sentinel-2", "l2a", "synthetic", "demo"],
        "extent": {
            "spatial": {
                "bbox": [[*bboxes[:, :2].min(axis=0).tolist(), *bboxes[:, 2:].max(axis=0).tolist()]]
            },
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "summaries": {
            "constellation": ["sentinel-2"],
            "platform": sorted({item["properties"]["platform"] for item in items}),
            "instruments": ["msi"],
            "gsd": [10, 20, 60],
        },
        "links": [],
    }


# ---------------------------------------------------------------------------------------------
# The world


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


@dataclass(frozen=True)
class _Tile:
    """What every date of one region shares while its files are written."""

    spec: DemoWorldSpec
    region: RegionSpec
    grid: TileGrid
    mgrs: tuple[int, str, str]  # (UTM zone, latitude band, grid square)
    build: Path
    root: Path
    wrong_flag: bool  # this region's first item carries a wrong boa_offset_applied flag

    @property
    def grid_code(self) -> str:
        return "".join(str(part) for part in self.mgrs)


def _tile(
    spec: DemoWorldSpec, region: RegionSpec, build: Path, root: Path, wrong_flag: bool
) -> _Tile:
    grid = tile_grid(region, spec.margin_px)
    shape = grid.shape(10)
    if shape[0] % 6 or shape[1] % 6:
        raise AssertionError(f"tile shape {shape} is not a multiple of 6 px")
    cx = (grid.region_bounds[0] + grid.region_bounds[2]) / 2
    cy = (grid.region_bounds[1] + grid.region_bounds[3]) / 2
    mgrs = mgrs_square(region.epsg, *region.center_lonlat, cx, cy)
    return _Tile(spec, region, grid, mgrs, build, root, wrong_flag)


def _region_entry(tile: _Tile, changes: list[PlantedChange]) -> dict:
    """The region's manifest entry before any date is written."""
    grid, region, dates = tile.grid, tile.region, tile.spec.dates
    tminx, tmaxy = grid.tile_bounds[0], grid.tile_bounds[3]
    return {
        "name": region.name,
        "epsg": region.epsg,
        "bbox": list(
            transform_bounds(
                f"EPSG:{region.epsg}", "EPSG:4326", *grid.region_bounds, densify_pts=21
            )
        ),
        "region_bounds_utm": list(grid.region_bounds),
        "tile_bounds_utm": list(grid.tile_bounds),
        "tile_shape_10m": list(grid.shape(10)),
        "region_window_px": list(grid.region_window()),
        "grid_code": f"MGRS-{tile.grid_code}",
        "dates": list(dates),
        "item_ids": {},
        "processing_baselines": {},
        "shifts_px": {},
        "atmosphere": {},
        "surface": {},
        "cloud_cover": {},
        "changes": [
            {
                "kind": c.kind,
                "material_from": c.material_from.name.lower(),
                "material_to": c.material_to.name.lower(),
                "from_date": dates[c.from_index],
                "bounds_px": list(c.bounds_px),
                "bounds_utm": [
                    tminx + 10 * c.bounds_px[1],
                    tmaxy - 10 * c.bounds_px[2],
                    tminx + 10 * c.bounds_px[3],
                    tmaxy - 10 * c.bounds_px[0],
                ],
            }
            for c in changes
        ],
        "truth": {"materials": {}, "change": {}},
    }


def _date_shift(rng: np.random.Generator, index: int, max_shift_px: float) -> tuple:
    """The date's planted sub-pixel shift; none on the first date."""
    if index == 0:
        return (0.0, 0.0)
    return tuple(round(float(v), 3) for v in rng.uniform(-max_shift_px, max_shift_px, 2))


def _item_properties(tile: _Tile, i: int, obs: Observation, baseline: str, platform: str) -> dict:
    """The STAC item properties of date ``i``."""
    zone, lat_band, square = tile.mgrs
    pct = obs.scl_percentages
    return {
        "datetime": acquisition_time(tile.spec.dates[i], tile.region.center_lonlat[0]),
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(obs.cloud_cover, 6),
        "proj:epsg": tile.region.epsg,
        "mgrs:utm_zone": zone,
        "mgrs:latitude_band": lat_band,
        "mgrs:grid_square": square,
        "grid:code": f"MGRS-{tile.grid_code}",
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": baseline,
        "s2:nodata_pixel_percentage": 0,
        "s2:cloud_shadow_percentage": round(pct[3], 6),
        "s2:vegetation_percentage": round(pct[4], 6),
        "s2:not_vegetated_percentage": round(pct[5], 6),
        "s2:water_percentage": round(pct[6], 6),
        "s2:medium_proba_clouds_percentage": round(pct[8], 6),
        "s2:high_proba_clouds_percentage": round(pct[9], 6),
        "s2:thin_cirrus_percentage": round(pct[10], 6),
        "s2:sequence": "0",
        # Deliberately wrong on one item, as on some real Earth Search items.
        "earthsearch:boa_offset_applied": (baseline >= BOA_OFFSET_BASELINE)
        != (tile.wrong_flag and i == 0),
    }


def _write_item(tile: _Tile, i: int, obs: Observation) -> dict:
    """Write date ``i``'s COGs under ``tile.build`` and return its STAC item."""
    grid, epsg, date = tile.grid, tile.region.epsg, tile.spec.dates[i]
    baseline = OLD_BASELINE if i == 0 else NEW_BASELINE
    platform = "sentinel-2b" if i % 2 == 0 else "sentinel-2a"
    item_id = f"S2{platform[-1].upper()}_{tile.grid_code}_{date.replace('-', '')}_0_L2A"
    item_dir = tile.build / tile.region.name / item_id
    final_dir = tile.root / tile.region.name / item_id
    assets = {}
    for b, band in enumerate(SPECTRAL_BANDS):
        factor = band.resolution_m // 10
        values = obs.reflectance[b] if factor == 1 else block_mean(obs.reflectance[b], factor)
        path = item_dir / f"{band.name}.tif"
        write_cog(path, to_dn(values, baseline), grid.transform(band.resolution_m), epsg)
        href = (final_dir / f"{band.name}.tif").as_uri()
        assets[band.earth_search_key] = band_asset(band.name, href, grid, baseline)
    write_cog(item_dir / "SCL.tif", obs.scl, grid.transform(SCL.resolution_m), epsg)
    assets[SCL.earth_search_key] = scl_asset((final_dir / "SCL.tif").as_uri(), grid)
    geometry, bbox = lonlat_footprint(grid)
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": ITEM_EXTENSIONS,
        "id": item_id,
        "collection": COLLECTION_ID,
        "geometry": geometry,
        "bbox": bbox,
        "properties": _item_properties(tile, i, obs, baseline, platform),
        "links": [],
        "assets": assets,
    }


def _write_truth(tile: _Tile, maps: list[np.ndarray], entry: dict) -> None:
    """The material map of every date and the change mask of every pair of dates."""
    name, dates, affine = tile.region.name, tile.spec.dates, tile.grid.transform(10)
    for date, material_map in zip(dates, maps, strict=True):
        rel = f"{name}/truth/materials_{date}.tif"
        write_cog(tile.build / rel, material_map, affine, tile.region.epsg)
        entry["truth"]["materials"][date] = rel
    for i, date_i in enumerate(dates):
        for j in range(i + 1, len(dates)):
            rel = f"{name}/truth/change_{date_i}_{dates[j]}.tif"
            changed = (maps[i] != maps[j]).astype(np.uint8)
            write_cog(tile.build / rel, changed, affine, tile.region.epsg)
            entry["truth"]["change"][f"{date_i}_{dates[j]}"] = rel


def _region(
    spec: DemoWorldSpec, index: int, region: RegionSpec, build: Path, root: Path, wrong_flag: bool
) -> tuple[dict, list[dict]]:
    """Generate one region's files under ``build``; return its manifest entry and items."""
    tile = _tile(spec, region, build, root, wrong_flag)
    base, textures = layout_materials(_rng(spec.seed, index, 0), tile.grid.shape(10))
    window = tile.grid.region_window()
    changes = plan_changes(_rng(spec.seed, index, 1), base, window, len(spec.dates))
    n_parcels = int(textures.parcels.max()) + 1
    latitude = region.center_lonlat[1]
    phenology = make_phenology(_rng(spec.seed, index, 3), base, n_parcels, latitude)
    entry = _region_entry(tile, changes)
    maps = [materials_on(base, changes, i) for i in range(len(spec.dates))]
    items = []
    for i, date in enumerate(spec.dates):
        rng = _rng(spec.seed, index, 2, i)
        shift = _date_shift(rng, i, spec.max_shift_px)
        conditions = date_conditions(_rng(spec.seed, index, 3, i), date, latitude, n_parcels)
        scene = Scene(maps[i], textures, phenology, conditions)
        fraction = spec.cloud_fractions[i % len(spec.cloud_fractions)]
        obs = observe(rng, scene, shift, fraction)
        item = _write_item(tile, i, obs)
        items.append(item)
        entry["item_ids"][date] = item["id"]
        entry["processing_baselines"][date] = item["properties"]["s2:processing_baseline"]
        entry["shifts_px"][date] = list(shift)
        entry["atmosphere"][date] = {"gain": obs.gain.tolist(), "haze": obs.haze.tolist()}
        entry["surface"][date] = conditions.record()
        entry["cloud_cover"][date] = item["properties"]["eo:cloud_cover"]
    _write_truth(tile, maps, entry)
    return entry, items


def _build(spec: DemoWorldSpec, build: Path, root: Path) -> dict:
    """Write the whole world into ``build`` with hrefs pointing into ``root``."""
    entries, items = [], []
    for index, region in enumerate(spec.regions):
        wrong_flag = index == len(spec.regions) - 1
        entry, region_items = _region(spec, index, region, build, root, wrong_flag)
        entries.append(entry)
        items += region_items
    wrong = [e["item_ids"][spec.dates[0]] for e in entries[-1:]]
    (build / "collection.json").write_text(json.dumps(collection_document(items), indent=1))
    (build / "items.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": items}, indent=1)
    )
    manifest = {
        "spec": asdict(spec),
        "spec_hash": spec.spec_hash(),
        "generator_version": GENERATOR_VERSION,
        "root_uri": root.as_uri(),
        "collection": COLLECTION_ID,
        "band_order": [b.name for b in SPECTRAL_BANDS],
        "materials": {int(m): m.name.lower() for m in Material},
        "shift_convention": (
            "image content moved by [dy, dx] 10 m pixels (rows, cols) relative to the truth "
            "grid, as scipy.ndimage.shift(truth, [dy, dx]); shift by [-dy, -dx] to undo"
        ),
        "atmosphere_model": "observed = surface * gain + haze (per band, in band_order)",
        "surface_model": (
            "unchanged ground differs between dates: maize and wheat calendars, tillage and "
            "soil moisture per parcel, leaf-out and summer browning per forest stand, river "
            "turbidity and wet banks, terrain shading by the date's sun (regions[].surface)"
        ),
        "boa_offset_flag_wrong": wrong,
        "regions": entries,
    }
    text = json.dumps(manifest, indent=1)
    (build / "manifest.json").write_text(text)
    return json.loads(text)  # the same value a later run loads


def load_manifest(root: Path, spec: DemoWorldSpec) -> dict | None:
    """The manifest at ``root`` if it is complete and was made from ``spec`` at this place."""
    path = Path(root) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    root_uri = Path(root).resolve().as_uri()
    if manifest.get("spec_hash") != spec.spec_hash() or manifest.get("root_uri") != root_uri:
        return None
    return manifest


def generate_demo_world(root: Path, spec: DemoWorldSpec = DEFAULT_SPEC) -> dict:
    """Generate the demo world at ``root`` (idempotent, atomic) and return its manifest.

    An existing world made from the same spec at the same place is returned as is. Otherwise
    the world is built in a hidden directory next to ``root`` and renamed into place, replacing
    an older demo world there; a non-empty directory that is not a demo world is refused.
    """
    root = Path(root).resolve()
    existing = load_manifest(root, spec)
    if existing is not None:
        return existing
    if root.exists() and any(root.iterdir()) and not (root / "manifest.json").exists():
        raise FileExistsError(
            f"{root} is not empty and holds no demo world; refusing to replace it"
        )
    try:
        with atomic_directory(root) as build:
            build.chmod(0o755)  # the world is meant to be shared read-only, whatever the umask
            manifest = _build(spec, build, root)
    except OSError:
        # Another process may have installed the same world meanwhile.
        existing = load_manifest(root, spec)
        if existing is None:
            raise
        return existing
    return manifest
