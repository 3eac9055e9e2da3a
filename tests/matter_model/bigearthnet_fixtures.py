"""Tiny BigEarthNet v1 folders in the official layout, and a tiny MATTER checkpoint, for tests.

``python -m tests.matter_model.bigearthnet_fixtures OUT`` writes the fixture dataset to ``OUT``.
Each patch is a UTM 1200 x 1200 m footprint with the twelve L2A bands at their native sizes
(120 / 60 / 20 px) as uint16 DN: a reflectance ramp from west to east plus a level that depends
on the patch's first label, so that labels are learnable from the bands.
"""

from __future__ import annotations

import argparse
import bz2
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from matter_model.checkpoint import build_model, save_checkpoint
from matter_model.datasets.bigearthnet import BIGEARTHNET_BANDS, LABELS_43
from matter_model.train import load_config

NATIVE_SIZE = {"B01": 20, "B09": 20, "B02": 120, "B03": 120, "B04": 120, "B08": 120}
ORIGIN = (404400.0, 5342400.0)  # upper-left corner, EPSG:32633 (a real patch's)

# Six patches with the labels of the real sample's kinds of scenes, and their official split.
PATCHES: dict[str, tuple[list[str], str]] = {
    "S2A_MSIL2A_20170613T101031_0_1": (["Non-irrigated arable land", "Pastures"], "train"),
    "S2A_MSIL2A_20170613T101031_0_2": (["Coniferous forest", "Mixed forest"], "train"),
    "S2A_MSIL2A_20170613T101031_0_3": (["Water bodies", "Peatbogs"], "train"),
    "S2A_MSIL2A_20170613T101031_0_4": (["Non-irrigated arable land", "Airports"], "train"),
    "S2A_MSIL2A_20170613T101031_0_5": (["Coniferous forest", "Water bodies"], "val"),
    "S2A_MSIL2A_20170613T101031_0_6": (["Non-irrigated arable land", "Mixed forest"], "test"),
    "S2A_MSIL2A_20170613T101031_0_7": (["Water bodies"], "test"),
}


def make_patch(
    root: Path, name: str, labels: Sequence[str], bands: Iterable[str] = BIGEARTHNET_BANDS
) -> Path:
    """Write one patch folder (``bands`` as GeoTIFFs, the labels metadata JSON) under ``root``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    level = 500 + 300 * (LABELS_43.index(labels[0]) % 7) if labels else 500
    for b, band in enumerate(bands):
        size = NATIVE_SIZE.get(band, 60)
        ramp = np.linspace(0, 1000, size, dtype=np.float32)[None, :].repeat(size, 0)
        data = (level + 50 * b + ramp).astype(np.uint16)
        profile = {
            "driver": "GTiff",
            "width": size,
            "height": size,
            "count": 1,
            "dtype": "uint16",
            "crs": "EPSG:32633",
            "transform": from_origin(*ORIGIN, 1200 / size, 1200 / size),
        }
        with rasterio.open(folder / f"{name}_{band}.tif", "w", **profile) as ds:
            ds.write(data, 1)
    metadata = {
        "labels": list(labels),
        "coordinates": {"ulx": ORIGIN[0], "uly": ORIGIN[1], "lrx": ORIGIN[0] + 1200},
        "tile_source": "S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP_20170613T101608.SAFE",
        "acquisition_date": "2017-06-13 10:10:31",
    }
    (folder / f"{name}_labels_metadata.json").write_text(json.dumps(metadata))
    return folder


def make_dataset(root: Path) -> Path:
    """All of ``PATCHES`` under ``root``, with train.csv.bz2 / val.csv / test.csv beside them."""
    for name, (labels, _) in PATCHES.items():
        make_patch(root, name, labels)
    for split in ("train", "val", "test"):
        names = [n for n, (_, s) in PATCHES.items() if s == split]
        text = "".join(f"{n}\n" for n in names)
        if split == "train":
            (root / "train.csv.bz2").write_bytes(bz2.compress(text.encode()))
        else:
            (root / f"{split}.csv").write_text(text)
    return root


def write_tiny_checkpoint(path: Path, bands: Sequence[str] = ("B02", "B03", "B04", "B08")) -> Path:
    """A randomly initialised tiny MATTER model saved as a training checkpoint."""
    config = load_config(
        bands=list(bands),
        subpatch=3,
        model={"width": 8, "blocks": [1], "tern_layers": 1, "codewords": 4, "embed_dim": 8},
    )
    model = build_model(config)
    return save_checkpoint(path, {"model": model.state_dict(), "config": config, "step": 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    make_dataset(parser.parse_args().out)


if __name__ == "__main__":
    main()
