"""Tiny SpaceNet 2 style AOI folders for tests: PAN chips and building GeoJSON in EPSG:4326.

``python -m tests.matter_model.spacenet_fixtures OUT`` writes the fixture AOI to ``OUT``.
Each chip is a 64 x 64 px, 0.5 m, EPSG:32616 uint16 PAN GeoTIFF with bright rectangular
buildings on darker ground; its label file holds those rectangles (pixel-edge aligned) as
GeoJSON polygons in EPSG:4326, as SpaceNet 2 distributes them, so the reader must reproject.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine, from_origin
from rasterio.warp import transform_geom

AOI = "AOI_9_Testville"
SIZE = 64
CRS = "EPSG:32616"
PIXEL = 0.5
# Buildings of each chip as (row, col, height, width) in px.
BUILDINGS: dict[int, list[tuple[int, int, int, int]]] = {
    1: [(4, 4, 12, 10), (30, 40, 16, 16)],
    2: [(10, 20, 8, 24), (40, 6, 14, 9), (50, 50, 10, 10)],
    3: [(20, 20, 20, 20)],
    4: [(2, 44, 9, 15), (44, 2, 15, 9)],
}


def chip_transform(index: int) -> Affine:
    return from_origin(733601.0 + index * SIZE * PIXEL, 3725139.0, PIXEL, PIXEL)


def make_chip(root: Path, index: int, buildings: list[tuple[int, int, int, int]]) -> Path:
    """Write ``PAN/PAN_<AOI>_img<index>.tif`` and its GeoJSON under ``root``."""
    transform = chip_transform(index)
    rng = np.random.default_rng(index)
    image = rng.integers(300, 400, size=(SIZE, SIZE)).astype(np.uint16)
    features = []
    for row, col, height, width in buildings:
        image[row : row + height, col : col + width] += 1200
        x0, y0 = transform * (col, row)
        x1, y1 = transform * (col + width, row + height)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        geometry = transform_geom(CRS, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
        features.append(
            {"type": "Feature", "properties": {"building": "yes"}, "geometry": geometry}
        )
    (root / "PAN").mkdir(parents=True, exist_ok=True)
    path = root / "PAN" / f"PAN_{AOI}_img{index}.tif"
    profile = {"driver": "GTiff", "width": SIZE, "height": SIZE, "count": 1, "dtype": "uint16"}
    with rasterio.open(path, "w", crs=CRS, transform=transform, **profile) as ds:
        ds.write(image, 1)
    labels = root / "geojson" / "buildings"
    labels.mkdir(parents=True, exist_ok=True)
    collection = {"type": "FeatureCollection", "features": features}
    (labels / f"buildings_{AOI}_img{index}.geojson").write_text(json.dumps(collection))
    return path


def make_aoi(root: Path) -> Path:
    """Every chip of ``BUILDINGS`` under ``root`` in the SpaceNet 2 layout."""
    for index, buildings in BUILDINGS.items():
        make_chip(root, index, buildings)
    return root


def planted_mask(index: int) -> np.ndarray:
    """The building pixels planted in chip ``index``."""
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    for row, col, height, width in BUILDINGS[index]:
        mask[row : row + height, col : col + width] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    make_aoi(parser.parse_args().out)


if __name__ == "__main__":
    main()
