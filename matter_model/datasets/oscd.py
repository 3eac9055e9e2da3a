"""Reader of the Onera Satellite Change Detection (OSCD) dataset in its official layout.

::

    <root>/Onera Satellite Change Detection dataset - Images/
        train.txt, test.txt                 comma-separated city names
        <city>/imgs_1/*_B01.tif .. *_B8A.tif  date 1, 13 bands, uint16 L1C, native 10/20/60 m
        <city>/imgs_2/*_Bxx.tif              date 2
        <city>/dates.txt                    "date_1: YYYYMMDD" / "date_2: YYYYMMDD"
    <root>/Onera Satellite Change Detection dataset - Train Labels/   (and "- Test Labels")
        <city>/cm/<city>-cm.tif             1 = no change, 2 = change (no georeference)
        <city>/cm/cm.png                    0 / 255 (used only when the tif is absent)

Grid: every band of both dates is brought onto the grid of ``imgs_1``'s B02 (10 m), which is the
grid of the labels. Bands on another grid are resampled by their own georeference with
rasterio (GDAL) **bilinear** resampling: the 20 / 60 m bands, and ``imgs_2`` where its grid
differs from ``imgs_1``'s. In the release the two dates always cover the same bounds; where
``imgs_2`` has fewer pixels (abudhabi, saclay_w, ...) its pixels are a little larger, so
aligning by georeference stretches it onto ``imgs_1``'s grid rather than cropping or padding,
which would shift its far edge by several pixels (measured by phase correlation on saclay_w:
the date-2 content drifts by 7 px over the image in raw pixel indices, and by none once aligned
by georeference). So the dates are checked for covering the same bounds (within
``MAX_SHAPE_DIFF_PX`` pixels), not for having the same shape: saclay_w's ``imgs_2`` is 9 px
narrower than ``imgs_1`` over identical bounds. Pixels of ``imgs_1``'s grid that no date-2
pixel covers are filled from their nearest covered pixel and marked invalid. Labels have no
georeference: one whose shape differs from ``imgs_1``'s B02 by at most ``MAX_SHAPE_DIFF_PX`` is
cropped / padded at the bottom-right (padding marked invalid); a larger difference is an error.

Values are DN / 10000 (top-of-atmosphere reflectance: L1C before processing baseline 04.00 has
no offset), as float32.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine, array_bounds
from rasterio.warp import reproject, transform_bounds
from scipy import ndimage

from matter_model.bands import MATTER_BANDS
from matter_model.change_detection import ChangePair

IMAGES_DIR = "Onera Satellite Change Detection dataset - Images"
LABEL_DIRS = (
    "Onera Satellite Change Detection dataset - Train Labels",
    "Onera Satellite Change Detection dataset - Test Labels",
)
ALL_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
# Largest mismatch in pixels tolerated between the two dates' bounds, or image and label shapes.
MAX_SHAPE_DIFF_PX = 8
REFLECTANCE_SCALE = 1e-4


class OSCDError(ValueError):
    """The OSCD folder is not in the expected layout, or its files disagree."""


@dataclass(frozen=True)
class OSCDCity:
    """One OSCD city on ``imgs_1``'s 10 m grid.

    ``image_1``/``image_2`` are ``(C, H, W)`` float32 reflectance in the order of ``bands``;
    ``label`` is ``(H, W)`` bool (True = change) or None; ``valid`` marks pixels covered by
    both dates (and the label, when there is one).
    """

    name: str
    bands: tuple[str, ...]
    image_1: np.ndarray
    image_2: np.ndarray
    label: np.ndarray | None
    valid: np.ndarray
    dates: tuple[date, date] | None
    crs: CRS
    transform: Affine

    def to_pair(self) -> ChangePair:
        """This city as a :class:`ChangePair` for change detection (needs a label)."""
        if self.label is None:
            raise OSCDError(f"city {self.name!r} has no change label")
        return ChangePair(self.name, self.image_1, self.image_2, self.label, self.valid)


@dataclass(frozen=True)
class _Grid:
    crs: CRS
    transform: Affine
    shape: tuple[int, int]


class OSCD:
    """The OSCD dataset at ``root`` (the folder holding the ``... - Images`` folder)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.images_dir = self.root / IMAGES_DIR
        if not self.images_dir.is_dir():
            raise OSCDError(f"no {IMAGES_DIR!r} folder under {self.root}")

    def cities(self, split: str = "all") -> list[str]:
        """City names of ``split``: "train" / "test" (from train.txt / test.txt) or "all"."""
        if split == "all":
            return sorted(p.name for p in self.images_dir.iterdir() if (p / "imgs_1").is_dir())
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")
        path = self.images_dir / f"{split}.txt"
        if not path.is_file():
            raise OSCDError(f"split file missing: {path}")
        return [c.strip() for c in path.read_text().replace("\n", ",").split(",") if c.strip()]

    def labelled_cities(self) -> list[str]:
        """Cities with images and a change label, sorted."""
        return [c for c in self.cities("all") if self._label_path(c) is not None]

    def load(
        self,
        city: str,
        bands: Sequence[str] = MATTER_BANDS,
        require_label: bool = False,
    ) -> OSCDCity:
        """Read ``city``'s two dates (bands in the order given) and its label if present."""
        unknown = [b for b in bands if b not in ALL_BANDS]
        if unknown or not bands:
            raise ValueError(f"unknown bands {unknown}; choose among {ALL_BANDS}")
        city_dir = self.images_dir / city
        if not city_dir.is_dir():
            raise OSCDError(f"city {city!r} not found: {city_dir} is missing")
        label_path = self._label_path(city)
        if label_path is None and require_label:
            raise OSCDError(f"city {city!r} has no change label under {self.root} ({LABEL_DIRS})")

        grid = _grid_of(_band_file(city_dir / "imgs_1", "B02"))
        _check_same_area(grid, _band_file(city_dir / "imgs_2", "B02"))

        image_1 = np.stack([_read_onto(_band_file(city_dir / "imgs_1", b), grid) for b in bands])
        image_2 = np.stack([_read_onto(_band_file(city_dir / "imgs_2", b), grid) for b in bands])
        valid = np.isfinite(image_1).all(axis=0) & np.isfinite(image_2).all(axis=0)
        if not valid.any():
            raise OSCDError(f"{city}: imgs_2 does not overlap imgs_1")
        image_1, image_2 = _fill_nearest(image_1, valid), _fill_nearest(image_2, valid)

        label = None
        if label_path is not None:
            label, label_valid = _read_label(label_path, grid.shape)
            valid &= label_valid
        return OSCDCity(
            name=city,
            bands=tuple(bands),
            image_1=image_1,
            image_2=image_2,
            label=label,
            valid=valid,
            dates=_read_dates(city_dir / "dates.txt"),
            crs=grid.crs,
            transform=grid.transform,
        )

    def iter_pairs(
        self, cities: Iterable[str] | None = None, bands: Sequence[str] = MATTER_BANDS
    ) -> Iterator[ChangePair]:
        """Stream labelled cities (default: all of them) as change pairs, one in memory at once."""
        for city in self.labelled_cities() if cities is None else cities:
            yield self.load(city, bands, require_label=True).to_pair()

    def _label_path(self, city: str) -> Path | None:
        for labels in LABEL_DIRS:
            cm = self.root / labels / city / "cm"
            for candidate in (cm / f"{city}-cm.tif", cm / "cm.png"):
                if candidate.is_file():
                    return candidate
        return None


def _band_file(folder: Path, band: str) -> Path:
    if not folder.is_dir():
        raise OSCDError(f"image folder missing: {folder}")
    found = sorted(folder.glob(f"*_{band}.tif"))
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files"
        raise OSCDError(f"band {band}: {what} matching '*_{band}.tif' in {folder}")
    return found[0]


def _grid_of(path: Path) -> _Grid:
    with rasterio.open(path) as ds:
        if ds.crs is None or ds.transform.is_identity:
            raise OSCDError(f"{path} has no georeference")
        return _Grid(ds.crs, ds.transform, ds.shape)


def _check_same_area(grid: _Grid, path: Path) -> None:
    """Refuse a date-2 file whose bounds are more than a few of ``grid``'s pixels off."""
    other = _grid_of(path)
    h, w = other.shape
    bounds = array_bounds(h, w, other.transform)
    if other.crs != grid.crs:
        bounds = transform_bounds(other.crs, grid.crs, *bounds)
    west, south, east, north = array_bounds(*grid.shape, grid.transform)
    px, py = abs(grid.transform.a), abs(grid.transform.e)
    off = (
        abs(bounds[0] - west) / px,
        abs(bounds[1] - south) / py,
        abs(bounds[2] - east) / px,
        abs(bounds[3] - north) / py,
    )
    if max(off) > MAX_SHAPE_DIFF_PX:
        raise OSCDError(
            f"{path} (shape {other.shape}) covers bounds {tuple(round(b, 6) for b in bounds)}, "
            f"imgs_1 B02 (shape {grid.shape}) covers {(west, south, east, north)}: edges differ "
            f"by up to {max(off):.1f} px (more than {MAX_SHAPE_DIFF_PX})"
        )


def _check_shapes(a: tuple[int, ...], b: tuple[int, ...], what: str) -> None:
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    if diff > MAX_SHAPE_DIFF_PX:
        raise OSCDError(
            f"{what}: shapes {tuple(a)} and {tuple(b)} differ by {diff} px "
            f"(more than {MAX_SHAPE_DIFF_PX})"
        )


def _read_onto(path: Path, grid: _Grid) -> np.ndarray:
    """One band as float32 reflectance on ``grid``; NaN where the file does not cover it."""
    with rasterio.open(path) as ds:
        if ds.crs is None or ds.transform.is_identity:
            raise OSCDError(f"{path} has no georeference")
        if (
            ds.crs == grid.crs
            and ds.shape == grid.shape
            and ds.transform.almost_equals(grid.transform)
        ):
            out = ds.read(1).astype(np.float32)
        else:
            out = np.full(grid.shape, np.nan, dtype=np.float32)
            reproject(
                source=rasterio.band(ds, 1),
                destination=out,
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                dst_nodata=np.nan,
                resampling=Resampling.bilinear,
            )
    out *= REFLECTANCE_SCALE
    return out


def _fill_nearest(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels of every band from the nearest valid pixel."""
    if valid.all():
        return image
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return image[:, idx[0], idx[1]]


def _read_label(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Label (True = change) and its coverage, cropped / padded at the bottom-right to ``shape``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            raw = ds.read(1)
    if path.suffix == ".png":
        change = raw > 127
    else:
        values = set(np.unique(raw).tolist())
        if values <= {1, 2}:
            change = raw == 2
        elif values <= {0, 1}:
            change = raw == 1
        else:
            raise OSCDError(f"{path}: label values {sorted(values)[:10]} are neither 1/2 nor 0/1")
    _check_shapes(change.shape, shape, f"{path}: label vs imgs_1 B02 grid")
    label = np.zeros(shape, dtype=bool)
    covered = np.zeros(shape, dtype=bool)
    h, w = min(shape[0], change.shape[0]), min(shape[1], change.shape[1])
    label[:h, :w] = change[:h, :w]
    covered[:h, :w] = True
    return label, covered


def _read_dates(path: Path) -> tuple[date, date] | None:
    if not path.is_file():
        return None
    found = dict(re.findall(r"date_([12])\s*:\s*(\d{8})", path.read_text()))
    if set(found) != {"1", "2"}:
        raise OSCDError(f"{path}: expected 'date_1: YYYYMMDD' and 'date_2: YYYYMMDD'")
    d1, d2 = (datetime.strptime(found[k], "%Y%m%d").date() for k in ("1", "2"))
    return d1, d2
