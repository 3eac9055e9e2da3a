"""Tiny OSCD releases in the official layout, written by the tests (and by hand:
``python -m tests.matter_model.oscd_fixtures OUT`` writes the three-city release the evaluation
tests use).

Bands are GeoTIFFs at their native 10 / 20 / 60 m (one pixel of 1e-4 degree at 10 m, EPSG:4326,
like the release); DN grow linearly with longitude, so any two grids agree wherever they see the
same place. A change is planted at date 2 inside the labelled rectangle; labels are
``<city>-cm.tif`` (1 = no change, 2 = change) without georeference, as in the release.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from matter_model.datasets.oscd import ALL_BANDS, IMAGES_DIR, LABEL_DIRS

NATIVE_M = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B01": 60, "B09": 60, "B10": 60}
PIXEL_DEG = 1e-4  # one 10 m pixel


def bounds_for(shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """West, south, east, north of a ``shape`` (rows, cols) grid of 10 m pixels at 2E 48N."""
    h, w = shape
    return (2.0, 48.0, 2.0 + w * PIXEL_DEG, 48.0 + h * PIXEL_DEG)


BOUNDS = bounds_for((20, 24))  # the default city: 24 x 20 px


def write_tif(path: Path, data: np.ndarray, bounds: tuple[float, ...] | None) -> None:
    """A one-band GeoTIFF, georeferenced in EPSG:4326 over ``bounds`` (None: no georeference)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": data.shape[0], "width": data.shape[1], "count": 1}
    profile["dtype"] = data.dtype.name
    if bounds is not None:
        profile["crs"] = "EPSG:4326"
        west, south, east, north = bounds
        h, w = data.shape
        profile["transform"] = Affine(
            (east - west) / w, 0.0, west, 0.0, -(north - south) / h, north
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # labels carry no georeference
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data, 1)


def ramp(shape: tuple[int, int], bounds: tuple[float, ...]) -> np.ndarray:
    """DN that grow linearly with longitude: identical wherever two grids see the same place."""
    west, _, east, _ = bounds
    h, w = shape
    lon = west + (np.arange(w) + 0.5) * (east - west) / w
    return np.broadcast_to(1000 + (lon - west) * 1e6, (h, w)).astype(np.float64)


def make_city(
    root: Path,
    city: str = "town",
    shape: tuple[int, int] = (20, 24),
    shape_2: tuple[int, int] | None = None,
    bounds_2: tuple[float, ...] | None = None,
    label_shape: tuple[int, int] | None = None,
    label: bool = True,
    missing: str | None = None,
    change: tuple[int, int, int, int] = (2, 6, 3, 9),
    change_dn: int = 0,
    noise_dn: float = 0.0,
    split: str = "train",
) -> None:
    """Write one city in the official OSCD layout under ``root`` and add it to ``split``.txt.

    ``change`` (row0, row1, col0, col1) is the labelled rectangle on the 10 m grid; date 2 is
    ``change_dn`` brighter there (in every band, on its own grid). ``noise_dn`` adds seeded
    Gaussian noise to every band. ``missing`` names a band left out of ``imgs_2``.
    """
    bounds_1 = bounds_for(shape)
    bounds_2 = bounds_2 or bounds_1
    images = root / IMAGES_DIR
    (images / city).mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        listed = images / f"{name}.txt"
        cities = [c for c in (listed.read_text().split(",") if listed.exists() else []) if c]
        if name == split and city not in cities:
            cities.append(city)
        listed.write_text(",".join(cities))
    (images / city / "dates.txt").write_text("date_1: 20160120\ndate_2: 20180328\n")
    rng = np.random.default_rng(sum(map(ord, city)))
    r0, r1, c0, c1 = change
    for date, shp, bnd in ((1, shape, bounds_1), (2, shape_2 or shape, bounds_2)):
        for band in ALL_BANDS:
            if band == missing and date == 2:
                continue
            f = NATIVE_M.get(band, 20) // 10
            native = (max(shp[0] // f, 1), max(shp[1] // f, 1))
            dn = (
                ramp(native, bnd) + rng.normal(0.0, noise_dn, native)
                if noise_dn
                else ramp(native, bnd)
            )
            if date == 2 and change_dn:
                sy, sx = native[0] / shape[0], native[1] / shape[1]
                dn[int(r0 * sy) : int(np.ceil(r1 * sy)), int(c0 * sx) : int(np.ceil(c1 * sx))] += (
                    change_dn
                )
            path = images / city / f"imgs_{date}" / f"T31UDQ_{band}.tif"
            write_tif(path, np.clip(dn, 0, 65535).astype(np.uint16), bnd)
    if label:
        lh, lw = label_shape or shape
        cm = np.ones((lh, lw), dtype=np.uint8)
        cm[r0:r1, c0:c1] = 2
        write_tif(root / LABEL_DIRS[0] / city / "cm" / f"{city}-cm.tif", cm, None)


def make_release(root: Path, cities: Sequence[str] = ("alpha", "beta", "gamma")) -> Path:
    """Labelled 48 x 40 px cities with a planted change each, plus one unlabelled city."""
    for k, city in enumerate(cities):
        top, left = 6 + 4 * k, 8 + 3 * k
        make_city(
            root,
            city,
            (40, 48),
            change=(top, top + 12, left, left + 14),
            change_dn=1500,
            noise_dn=30,
        )
    make_city(root, "nolabel", (40, 48), label=False, noise_dn=30, split="test")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.matter_model.oscd_fixtures OUT")
    print(make_release(Path(sys.argv[1])))
