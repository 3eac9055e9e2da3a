"""Reader of BigEarthNet v1 (Sentinel-2) in its official layout, as a streaming torch Dataset.

::

    <root>/<patch>/<patch>_B01.tif .. _B12.tif, _B8A.tif   uint16 L2A reflectance x 10000, UTM
                   (10 m bands 120 x 120 px, 20 m bands 60 x 60, 60 m bands 20 x 20; no B10)
    <root>/<patch>/<patch>_labels_metadata.json          {"labels": [CORINE level-3 names], ...}
    train.csv, val.csv, test.csv (or .csv.bz2)            the official split: one patch name per
                                                          row (a second column, the S1 twin, is
                                                          ignored); in ``root`` or its parent

Every band is brought onto the 10 m 120 x 120 grid of the patch. All bands of a patch cover the
same 1200 x 1200 m footprint (checked), so GDAL's bilinear resampling on read
(``out_shape=(120, 120)``) is resampling by georeference. Values are DN / 10000 as float32
(BigEarthNet predates processing baseline 04.00: no offset), the scale MATTER pretrains on.

Labels: the 43 CORINE classes of the metadata, or (default) the 19-class nomenclature of
Sumbul et al. 2020, where ``NOMENCLATURE_19`` maps each of the 19 classes to the 43-class labels
it merges; the 11 labels it lists nowhere (e.g. "Airports") have no 19-class counterpart and are
dropped. A patch reads one file per band when it is indexed: nothing is held in memory between
items, so the full 590k-patch dataset streams through a DataLoader.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.transform import array_bounds
from torch.utils.data import Dataset

from matter_model.bands import MATTER_BANDS

# The twelve L2A bands of a BigEarthNet-S2 patch (B10, cirrus, is not in L2A).
BIGEARTHNET_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)  # fmt: skip
PATCH_SIZE = 120  # px of the 10 m grid
REFLECTANCE_SCALE = 1e-4
SPLITS = ("train", "val", "test")
# Largest disagreement tolerated between a band's footprint and the 10 m grid's, in metres.
MAX_BOUNDS_DIFF_M = 1.0

# The 43 CORINE Land Cover level-3 labels of BigEarthNet v1, in the order of its documentation.
LABELS_43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

# The official 19-class nomenclature (Sumbul et al., "BigEarthNet-MM", 2020): each class and the
# 43-class labels it merges, in the nomenclature's order.
NOMENCLATURE_19: dict[str, tuple[str, ...]] = {
    "Urban fabric": ("Continuous urban fabric", "Discontinuous urban fabric"),
    "Industrial or commercial units": ("Industrial or commercial units",),
    "Arable land": ("Non-irrigated arable land", "Permanently irrigated land", "Rice fields"),
    "Permanent crops": (
        "Vineyards",
        "Fruit trees and berry plantations",
        "Olive groves",
        "Annual crops associated with permanent crops",
    ),
    "Pastures": ("Pastures",),
    "Complex cultivation patterns": ("Complex cultivation patterns",),
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    ),
    "Agro-forestry areas": ("Agro-forestry areas",),
    "Broad-leaved forest": ("Broad-leaved forest",),
    "Coniferous forest": ("Coniferous forest",),
    "Mixed forest": ("Mixed forest",),
    "Natural grassland and sparsely vegetated areas": (
        "Natural grassland",
        "Sparsely vegetated areas",
    ),
    "Moors, heathland and sclerophyllous vegetation": (
        "Moors and heathland",
        "Sclerophyllous vegetation",
    ),
    "Transitional woodland, shrub": ("Transitional woodland/shrub",),
    "Beaches, dunes, sands": ("Beaches, dunes, sands",),
    "Inland wetlands": ("Inland marshes", "Peatbogs"),
    "Coastal wetlands": ("Salt marshes", "Salines"),
    "Inland waters": ("Water courses", "Water bodies"),
    "Marine waters": ("Coastal lagoons", "Estuaries", "Sea and ocean"),
}
LABELS_19: tuple[str, ...] = tuple(NOMENCLATURE_19)


class BigEarthNetError(ValueError):
    """A BigEarthNet folder or file is not in the official layout."""


def class_names(nomenclature: int) -> tuple[str, ...]:
    """The class names of the 19- or 43-class nomenclature, in target-vector order."""
    if nomenclature == 19:
        return LABELS_19
    if nomenclature == 43:
        return LABELS_43
    raise ValueError(f"nomenclature must be 19 or 43, not {nomenclature!r}")


def encode_labels(labels: Sequence[str], nomenclature: int = 19, where: str = "") -> np.ndarray:
    """Multi-hot float32 vector of 43-class ``labels`` in the 19- or 43-class nomenclature."""
    unknown = [label for label in labels if label not in _INDEX_43]
    if unknown:
        raise BigEarthNetError(
            f"{where or 'labels'}: {unknown} are not BigEarthNet v1 labels (the 43 CORINE "
            f"classes of LABELS_43)"
        )
    names = class_names(nomenclature)
    target = np.zeros(len(names), dtype=np.float32)
    for label in labels:
        index = _INDEX_43[label] if nomenclature == 43 else _TO_19.get(label)
        if index is not None:
            target[index] = 1.0
    return target


def read_split(path: str | Path) -> list[str]:
    """Patch names of an official split CSV (plain or .bz2; no header; first column)."""
    path = Path(path)
    raw = path.read_bytes()
    text = (bz2.decompress(raw) if path.suffix == ".bz2" else raw).decode()
    return [row[0].strip() for row in csv.reader(io.StringIO(text)) if row and row[0].strip()]


def find_split_file(root: str | Path, split: str, split_dir: str | Path | None = None) -> Path:
    """``<split>.csv`` or ``<split>.csv.bz2`` in ``split_dir``, else in ``root`` or its parent."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    root = Path(root)
    folders = [Path(split_dir)] if split_dir is not None else [root, root.parent]
    candidates = [folder / f"{split}{ext}" for folder in folders for ext in (".csv", ".csv.bz2")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BigEarthNetError(
        f"no split file for {split!r}: looked for {[str(c) for c in candidates]}; "
        "download the official BigEarthNet v1 split CSVs or pass split_dir"
    )


class BigEarthNet(Dataset):
    """BigEarthNet-S2 patches under ``root``: ``(image (C, 120, 120) float32, target (K,))``.

    ``split`` (train / val / test) keeps the patches of the official split CSV that exist under
    ``root`` (a partial download is fine; none at all is an error); ``None`` takes every patch
    folder. ``bands`` are read in the order given; ``nomenclature`` is 19 or 43. ``transform``,
    if given, prepares each image (C, H, W) for the model, e.g. a per-band standardisation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        bands: Sequence[str] = MATTER_BANDS,
        nomenclature: int = 19,
        split_dir: str | Path | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        if not self.root.is_dir():
            raise BigEarthNetError(f"BigEarthNet root {self.root} is not a folder")
        unknown = [b for b in bands if b not in BIGEARTHNET_BANDS]
        if unknown or not bands:
            raise BigEarthNetError(
                f"bands {unknown or '[]'} are not in BigEarthNet-S2; choose among "
                f"{BIGEARTHNET_BANDS}"
            )
        self.bands = tuple(bands)
        self.classes = class_names(nomenclature)
        self.nomenclature = nomenclature
        present = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if split is None:
            self.patches = present
        else:
            wanted = read_split(find_split_file(self.root, split, split_dir))
            have = set(present)
            self.patches = [p for p in wanted if p in have]
        if not self.patches:
            raise BigEarthNetError(
                f"no BigEarthNet patch folders under {self.root}"
                + (f" from the {split!r} split" if split else "")
            )

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        patch = self.patches[index]
        image = self.read_image(patch)
        if self.transform is not None:
            image = self.transform(image)
        return torch.from_numpy(image), torch.from_numpy(self.read_target(patch))

    def read_image(self, patch: str) -> np.ndarray:
        """The patch's ``bands`` on the 10 m 120 x 120 grid, as float32 reflectance."""
        folder = self.root / patch
        with rasterio.open(_band_path(folder, "B02")) as ref:
            grid_bounds = array_bounds(ref.height, ref.width, ref.transform)
        image = np.empty((len(self.bands), PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
        for i, band in enumerate(self.bands):
            path = _band_path(folder, band)
            with rasterio.open(path) as ds:
                bounds = array_bounds(ds.height, ds.width, ds.transform)
                off = max(abs(a - b) for a, b in zip(bounds, grid_bounds, strict=True))
                if off > MAX_BOUNDS_DIFF_M:
                    raise BigEarthNetError(
                        f"{path} covers {bounds}, the patch's B02 covers {grid_bounds}: "
                        f"edges differ by {off:.1f} m"
                    )
                image[i] = ds.read(
                    1, out_shape=(PATCH_SIZE, PATCH_SIZE), resampling=Resampling.bilinear
                )
        image *= REFLECTANCE_SCALE
        return image

    def read_labels(self, patch: str) -> list[str]:
        """The 43-class labels of the patch's ``<patch>_labels_metadata.json``."""
        path = self.root / patch / f"{patch}_labels_metadata.json"
        if not path.is_file():
            raise BigEarthNetError(f"patch {patch!r} has no labels metadata: {path} is missing")
        try:
            labels = json.loads(path.read_text())["labels"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BigEarthNetError(
                f"{path}: not a BigEarthNet labels metadata file ({exc})"
            ) from exc
        return list(labels)

    def read_target(self, patch: str) -> np.ndarray:
        """The patch's multi-hot target in this dataset's nomenclature."""
        return encode_labels(self.read_labels(patch), self.nomenclature, where=patch)


def _band_path(folder: Path, band: str) -> Path:
    path = folder / f"{folder.name}_{band}.tif"
    if not path.is_file():
        raise BigEarthNetError(f"band {band} of patch {folder.name!r} is missing: {path}")
    return path


_INDEX_43 = {label: i for i, label in enumerate(LABELS_43)}
_TO_19 = {old: i for i, merged in enumerate(NOMENCLATURE_19.values()) for old in merged}
