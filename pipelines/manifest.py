"""The triplet manifest of a shard: one GeoParquet row per anchor / positive / negative triplet.

Each row says where the triplet lies (its window's footprint as a polygon in EPSG:4326, from the
bbox and CRS of ``patches.csv``), when (anchor, positive and negative dates), from which STAC
items (the ids of the partition's items acquired on each date), how valid its crops are and
what the change screen scored its window. It is derived after tiling from the shard's
``patches.csv``, the change screens and the partitions' items alone, so the tiling is unchanged.

The file is written under a hidden temporary name and renamed into place; the same inputs give
the same bytes, so its SHA-256 names the dataset's content (``patch_store.record_manifest``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from matter_model.atomic_io import atomic_file
from pipelines.stac.snapshot import file_sha256

log = logging.getLogger(__name__)

WGS84 = "EPSG:4326"
ROLES = ("anchor", "positive", "negative")
# Columns of patches.csv the manifest carries as they are.
CARRIED = [
    "region",
    "tile",
    "negative_region",
    "window_row",
    "window_col",
    "negative_row",
    "negative_col",
    "anchor_date",
    "positive_date",
    "negative_date",
    "anchor_valid_fraction",
    "positive_valid_fraction",
    "negative_valid_fraction",
    "crs",
    "transform",
]


class ManifestError(ValueError):
    """The inputs of a manifest do not agree (a date without items, a window off the screen)."""


def items_by_date(items: Sequence[dict]) -> dict[str, list[str]]:
    """The sorted ids of ``items`` per acquisition date (``YYYY-MM-DD``), as stacks group them."""
    ids: dict[str, list[str]] = defaultdict(list)
    for item in items:
        ids[str(item["properties"]["datetime"])[:10]].append(str(item["id"]))
    return {date: sorted(found) for date, found in ids.items()}


def _ids(by_date: Mapping[str, Mapping[str, list[str]]], region: str, date: str) -> list[str]:
    ids = by_date.get(region, {}).get(date)
    if not ids:
        raise ManifestError(
            f"no STAC item of region {region!r} was acquired on {date}, a date of its patches: "
            "re-run `stac_items` and the stages after it for this partition"
        )
    return ids


def _screened(
    table: pd.DataFrame,
    screens: Mapping[str, pd.DataFrame],
    region_column: str,
    row: str,
    col: str,
) -> pd.DataFrame:
    """The change screen's score and valid share of each row's window, aligned with ``table``."""
    out = pd.DataFrame(np.nan, index=table.index, columns=["score", "min_valid_fraction"])
    for region, rows in table.groupby(region_column):
        if region not in screens:
            raise ManifestError(f"no change screen given for region {region!r}")
        keyed = screens[region].set_index(["row", "col"])[list(out.columns)]
        index = pd.MultiIndex.from_arrays([rows[row].to_numpy(), rows[col].to_numpy()])
        missing = index.difference(keyed.index)
        if len(missing):
            raise ManifestError(
                f"windows {list(missing)[:3]} of region {region!r} are not in its change screen: "
                "re-run `change_screen` and `patch_triplets` for the partition"
            )
        out.loc[rows.index] = keyed.loc[index].to_numpy()
    return out


def footprints(patches: pd.DataFrame) -> gpd.GeoSeries:
    """Each triplet's window as a polygon in EPSG:4326, from its bbox in its own CRS."""
    out = gpd.GeoSeries([None] * len(patches), index=patches.index, crs=WGS84)
    for crs, rows in patches.groupby("crs"):
        boxes = shapely.box(rows["minx"], rows["miny"], rows["maxx"], rows["maxy"])
        out.loc[rows.index] = gpd.GeoSeries(boxes, index=rows.index, crs=crs).to_crs(WGS84)
    return out


def triplet_manifest(
    patches: pd.DataFrame,
    shard: str,
    screens: Mapping[str, pd.DataFrame],
    items: Mapping[str, Sequence[dict]],
) -> gpd.GeoDataFrame:
    """The manifest of one shard's ``patches`` (its ``patches.csv``): ``screens`` and ``items``
    are the change screen and STAC items of each region its anchors and negatives come from."""
    by_date = {region: items_by_date(found) for region, found in items.items()}
    table = patches[CARRIED].copy().reset_index(drop=True)
    table.insert(0, "index_in_shard", range(len(table)))
    table.insert(0, "shard", shard)
    for role in ROLES:
        region_column = "negative_region" if role == "negative" else "region"
        table[f"{role}_items"] = [
            _ids(by_date, region, date)
            for region, date in zip(table[region_column], table[f"{role}_date"], strict=True)
        ]
    for prefix, region_column, row, col in (
        ("", "region", "window_row", "window_col"),
        ("negative_", "negative_region", "negative_row", "negative_col"),
    ):
        screened = _screened(table, screens, region_column, row, col)
        table[f"{prefix}change_score"] = screened["score"].astype(float)
        table[f"{prefix}window_valid_fraction"] = screened["min_valid_fraction"].astype(float)
    return gpd.GeoDataFrame(table, geometry=footprints(patches.reset_index(drop=True)), crs=WGS84)


def write_manifest(path: str | Path, manifest: gpd.GeoDataFrame) -> str:
    """Write ``manifest`` as GeoParquet at ``path`` atomically; return the file's SHA-256."""
    with atomic_file(path) as tmp:
        manifest.to_parquet(tmp, index=False, compression="zstd")
    digest = file_sha256(path)
    log.info("manifest of %d triplets at %s (sha256 %s)", len(manifest), path, digest)
    return digest


def read_manifest(path: str | Path) -> gpd.GeoDataFrame:
    """A manifest written by :func:`write_manifest`."""
    return gpd.read_parquet(path)
