"""SpaceNet building footprints: chips and their GeoJSON turned into masks, and the SpaceNet scorer.

Layouts (SpaceNet 2 and 4, as distributed)::

    <AOI>/PAN/PAN_<AOI>_img<N>.tif             (also MUL/, RGB-PanSharpen/, Pan-Sharpen/, ...)
    <AOI>/geojson/buildings/buildings_<AOI>_img<N>.geojson
    <collect>/Pan-Sharpen/Pan-Sharpen_<collect>_<x>_<y>.tif
    <collect>/../geojson/spacenet-buildings/spacenet-buildings_<x>_<y>.geojson

A chip and its label file share a chip id: the name after the image-type prefix
(``PAN_AOI_2_Vegas_img1`` -> ``AOI_2_Vegas_img1``); the label's id may be a trailing part of the
chip's (SpaceNet 4 names labels by the chip's coordinates only). Footprints are rasterised on
the chip's own georeference (its CRS and transform; GeoJSON in another CRS, EPSG:4326 for most
SpaceNet labels, is reprojected first), a pixel counting as building when its centre falls in a
footprint (GDAL's rule, as solaris' ``footprint_mask``).

The scorer is the SpaceNet building challenge's (solaris ``Evaluator.eval_iou_spacenet_csv``):
per image, proposals in descending confidence each take the remaining truth polygon of highest
IoU; IoU above 0.5 is a true positive and removes that truth polygon, anything else a false
positive; unmatched truth polygons are false negatives. Truth polygons under 20 px^2 and
proposals of 20 px^2 or less are ignored. F1 over a dataset sums TP / FP / FN over its images.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
import shapely.affinity
import torch
from rasterio.crs import CRS
from rasterio.features import rasterize, shapes
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from shapely.geometry import box, shape
from torch.utils.data import Dataset

from matter_model.metrics import MatchCounts

MIN_AREA_PX = 20.0
IOU_THRESHOLD = 0.5
GEOJSON_DEFAULT_CRS = CRS.from_epsg(4326)
LABEL_DIRS = ("geojson/buildings", "geojson/spacenet-buildings", "geojson_buildings")


class SpaceNetError(ValueError):
    """A SpaceNet chip, label file or scoring CSV is missing or malformed."""


# ---------------------------------------------------------------------------------------------
# Footprints and masks


def read_footprints(path: str | Path, crs: CRS) -> list[dict[str, Any]]:
    """The polygon geometries of a GeoJSON label file, as GeoJSON dicts in ``crs``."""
    path = Path(path)
    if not path.is_file():
        raise SpaceNetError(f"label file missing: {path}")
    try:
        collection = json.loads(path.read_text())
        features = collection["features"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SpaceNetError(f"{path} is not a GeoJSON FeatureCollection ({exc})") from exc
    declared = (collection.get("crs") or {}).get("properties", {}).get("name")
    source = CRS.from_user_input(declared) if declared else GEOJSON_DEFAULT_CRS
    geoms = [f["geometry"] for f in features if f.get("geometry")]
    geoms = [g for g in geoms if g["type"] in ("Polygon", "MultiPolygon")]
    if source != crs:
        geoms = [transform_geom(source, crs, g) for g in geoms]
    return geoms


def footprint_mask(
    geometries: Sequence[dict[str, Any]], transform: Affine, out_shape: tuple[int, int]
) -> np.ndarray:
    """Bool mask (H, W) of the pixels whose centre lies in a footprint (geometries in chip CRS)."""
    if not geometries:
        return np.zeros(out_shape, dtype=bool)
    burned = rasterize(
        [(g, 1) for g in geometries], out_shape=out_shape, transform=transform, dtype="uint8"
    )
    return burned.astype(bool)


def to_pixel_polygons(geometries: Iterable[dict[str, Any]], transform: Affine) -> list[Any]:
    """Chip-CRS geometries as shapely polygons in pixel coordinates (x = column, y = row)."""
    inverse = ~transform
    coeffs = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f]
    return [shapely.affinity.affine_transform(shape(g), coeffs) for g in geometries]


def mask_to_polygons(mask: np.ndarray) -> list[Any]:
    """Building polygons (pixel coordinates) of a bool mask: its 4-connected regions."""
    mask = np.asarray(mask, dtype=np.uint8)
    return [shape(geom) for geom, _ in shapes(mask, mask=mask.astype(bool), connectivity=4)]


def clip_polygons(polygons: Iterable[Any], window: tuple[int, int, int, int]) -> list[Any]:
    """Polygons cut to the pixel window ``(row, col, height, width)``, shifted to its origin."""
    row, col, height, width = window
    frame = box(col, row, col + width, row + height)
    clipped = []
    for polygon in polygons:
        part = _valid(polygon).intersection(frame)
        if not part.is_empty and part.area > 0:
            clipped.append(shapely.affinity.translate(part, -col, -row))
    return clipped


# ---------------------------------------------------------------------------------------------
# The SpaceNet building scorer


def match_buildings(
    truth: Sequence[Any],
    proposals: Sequence[Any],
    confidences: Sequence[float] | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    min_area: float = MIN_AREA_PX,
) -> MatchCounts:
    """SpaceNet matching of one image's proposal polygons against its truth polygons."""
    remaining = [_valid(t) for t in truth if t.area >= min_area]
    kept = [(i, _valid(p)) for i, p in enumerate(proposals) if p.area > min_area]
    if confidences is not None:
        kept.sort(key=lambda item: -float(confidences[item[0]]))  # stable: ties keep file order
    alive = np.ones(len(remaining), dtype=bool)
    tree = shapely.STRtree(remaining) if remaining else None
    tp = fp = 0
    for _, proposal in kept:
        best, best_iou = -1, 0.0
        if tree is not None and proposal.area > 0:
            for j in tree.query(proposal, predicate="intersects"):
                if alive[j]:
                    inter = proposal.intersection(remaining[j]).area
                    iou = inter / proposal.union(remaining[j]).area
                    if iou > best_iou:
                        best, best_iou = int(j), iou
        if best >= 0 and best_iou > iou_threshold:
            alive[best] = False
            tp += 1
        else:
            fp += 1
    return MatchCounts(tp, fp, int(alive.sum()))


def read_solution_csv(path: str | Path) -> dict[str, list[tuple[Any, float]]]:
    """A SpaceNet CSV (``ImageId, BuildingId, PolygonWKT_Pix[, Confidence]``) as
    ``{image id: [(pixel polygon, confidence)]}``, in file order; ``POLYGON EMPTY`` rows keep
    the image but add no polygon."""
    path = Path(path)
    if not path.is_file():
        raise SpaceNetError(f"SpaceNet CSV missing: {path}")
    images: dict[str, list[tuple[Any, float]]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"ImageId", "PolygonWKT_Pix"}
        if not need <= set(reader.fieldnames or ()):
            raise SpaceNetError(f"{path}: columns {reader.fieldnames} lack {sorted(need)}")
        for row in reader:
            polygons = images.setdefault(row["ImageId"], [])
            geom = shapely.from_wkt(row["PolygonWKT_Pix"])
            if not geom.is_empty:
                polygons.append((shapely.force_2d(geom), float(row.get("Confidence") or 1.0)))
    return images


def score_solution_csv(truth_csv: str | Path, proposal_csv: str | Path) -> dict[str, MatchCounts]:
    """SpaceNet counts per image id (every id of either file) for a truth and a proposal CSV."""
    truth, proposals = read_solution_csv(truth_csv), read_solution_csv(proposal_csv)
    scores = {}
    for image in sorted(set(truth) | set(proposals)):
        found = proposals.get(image, [])
        scores[image] = match_buildings(
            [p for p, _ in truth.get(image, [])],
            [p for p, _ in found],
            [c for _, c in found],
        )
    return scores


def pixel_iou(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """Intersection and union pixel counts of the building class (sum them over a dataset)."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    return int((prediction & truth).sum()), int((prediction | truth).sum())


def _valid(polygon: Any) -> Any:
    return polygon if polygon.is_valid else polygon.buffer(0)


# ---------------------------------------------------------------------------------------------
# Chips as a torch Dataset


@dataclass(frozen=True)
class Chip:
    """One image chip and its label file."""

    chip_id: str
    image: Path
    labels: Path


def chip_id(path: Path) -> str:
    """The chip id of a SpaceNet image or label file: its name after the type prefix."""
    prefix, sep, rest = path.stem.partition("_")
    return rest if sep else prefix


def pair_chips(images: Sequence[Path], labels: Sequence[Path]) -> list[Chip]:
    """Chips of ``images`` that have a label file (same chip id, or the label's id a trailing
    ``_``-separated part of the chip's); a single image and a single label always pair."""
    if len(images) == 1 and len(labels) == 1:
        return [Chip(chip_id(images[0]), images[0], labels[0])]
    by_id = {chip_id(p): p for p in labels}
    chips = []
    for image in images:
        parts = chip_id(image).split("_")
        for k in range(len(parts)):
            label = by_id.get("_".join(parts[k:]))
            if label is not None:
                chips.append(Chip(chip_id(image), image, label))
                break
    return chips


def find_chips(images: str | Path, labels: str | Path) -> list[Chip]:
    """Chips from an image folder (``*.tif``) or file and a label folder (``*.geojson``) or file."""
    images, labels = Path(images), Path(labels)
    for what, path in (("image", images), ("label", labels)):
        if not path.exists():
            raise SpaceNetError(f"{what} path {path} does not exist")
    image_files = sorted(images.glob("*.tif")) if images.is_dir() else [images]
    label_files = sorted(labels.glob("*.geojson")) if labels.is_dir() else [labels]
    chips = pair_chips(image_files, label_files)
    if not chips:
        raise SpaceNetError(
            f"no chip of {images} ({len(image_files)} images) has a label file in {labels} "
            f"({len(label_files)} GeoJSON): chip ids must match"
        )
    return chips


def default_label_dir(root: str | Path) -> Path:
    """The building-label folder of a SpaceNet AOI folder (``geojson/buildings``, ...)."""
    root = Path(root)
    for candidate in (root / d for d in LABEL_DIRS):
        if candidate.is_dir():
            return candidate
    raise SpaceNetError(f"no building labels under {root}: looked for {list(LABEL_DIRS)}")


def read_chip(path: Path) -> tuple[np.ndarray, CRS, Affine]:
    """A chip's bands as float32, standardised per band over its non-zero (valid) pixels.

    VHR chips come as 11-bit / 16-bit DN or float reflectance, depending on the SpaceNet round:
    standardising each chip makes them comparable without dataset statistics.
    """
    with rasterio.open(path) as ds:
        if ds.crs is None:
            raise SpaceNetError(f"chip {path} has no georeference: footprints cannot be placed")
        image = ds.read().astype(np.float32)
        crs, transform = ds.crs, ds.transform
    valid = (image != 0).any(axis=0)
    for band in image:
        values = band[valid] if valid.any() else band.ravel()
        band -= values.mean()
        band /= max(float(values.std()), 1e-6)
    return image, crs, transform


class SpaceNetTiles(Dataset):
    """Square tiles of SpaceNet chips: ``(image (C, t, t) float32, mask (t, t) float32, index)``.

    Each chip is cut into a grid of ``tile`` px tiles (the last row / column flush with the
    chip's edge, so tiles may overlap there); ``tile=None`` takes whole chips (they must then
    share one size for batching). ``tiles`` lists ``(chip index, row, col)``; only the current
    item's chip is read, so the dataset streams.
    """

    def __init__(self, chips: Sequence[Chip], tile: int | None = None) -> None:
        if not chips:
            raise SpaceNetError("no SpaceNet chips given")
        self.chips = list(chips)
        self.tile = tile
        self.tiles: list[tuple[int, int, int]] = []
        self.band_count: int | None = None
        for i, chip in enumerate(self.chips):
            with rasterio.open(chip.image) as ds:
                height, width, count = ds.height, ds.width, ds.count
            if self.band_count is None:
                self.band_count = count
            elif count != self.band_count:
                raise SpaceNetError(
                    f"chip {chip.image} has {count} bands, {self.chips[0].image} has "
                    f"{self.band_count}: use one image type (PAN, MUL, ...) per run"
                )
            size = tile or max(height, width)
            if tile is not None and (height < tile or width < tile):
                raise SpaceNetError(f"chip {chip.image} ({height} x {width}) is under {tile} px")
            rows = _starts(height, size) if tile else [0]
            cols = _starts(width, size) if tile else [0]
            self.tiles.extend((i, r, c) for r in rows for c in cols)

    def __len__(self) -> int:
        return len(self.tiles)

    def window(self, index: int) -> tuple[int, int, int, int]:
        """``(row, col, height, width)`` of tile ``index`` in its chip."""
        chip, row, col = self.tiles[index]
        if self.tile is None:
            with rasterio.open(self.chips[chip].image) as ds:
                return 0, 0, ds.height, ds.width
        return row, col, self.tile, self.tile

    def truth_polygons(self, index: int) -> list[Any]:
        """Truth footprints of tile ``index`` in its pixel coordinates (cut at its edges)."""
        chip = self.chips[self.tiles[index][0]]
        with rasterio.open(chip.image) as ds:
            crs, transform = ds.crs, ds.transform
        polygons = to_pixel_polygons(read_footprints(chip.labels, crs), transform)
        return clip_polygons(polygons, self.window(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        chip = self.chips[self.tiles[index][0]]
        image, crs, transform = read_chip(chip.image)
        mask = footprint_mask(read_footprints(chip.labels, crs), transform, image.shape[1:])
        row, col, height, width = self.window(index)
        image = image[:, row : row + height, col : col + width]
        mask = mask[row : row + height, col : col + width]
        return (
            torch.from_numpy(np.ascontiguousarray(image)),
            torch.from_numpy(mask.astype(np.float32)),
            index,
        )


def _starts(length: int, size: int) -> list[int]:
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts
