"""Patch assets: the change screen of each partition and its anchor / positive / negative crops."""

import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from assets.model import product_level_of
from assets.partitions import CONFIG, REGION_TIMES, RegionTime, region_time
from assets.previews import figure_png, png_metadata
from assets.resources import DataStore
from matter_model.atomic_io import atomic_write_text
from matter_model.patch_store import ROLES, manifest_path, read_shard, record_manifest
from pipelines.change_screen import screen_windows, screening_quality, window_truth
from pipelines.dates import stack_dates
from pipelines.demo_world.truth import change_truth
from pipelines.manifest import triplet_manifest, write_manifest
from pipelines.stack_store import open_stack, stack_grid
from pipelines.tiling import NegativePool, StackSource, TilingSettings, tile_to_store

GROUP = "patches"


@dg.asset(
    partitions_def=REGION_TIMES, group_name=GROUP, deps=["coregistered_stack"], kinds={"pandas"}
)
def change_screen(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """The windows of the partition that stayed unchanged between every pair of its dates."""
    part = region_time(context)
    stack = open_stack(store.stack(part.region, part.time)).load()
    table = screen_windows(stack, **CONFIG.screen.model_dump())
    path = store.screen(part.region, part.time)
    atomic_write_text(path, table.to_csv(index=False))
    rows, cols = int(table["row"].max()) + 1, int(table["col"].max()) + 1
    kept = table["unchanged"].to_numpy().reshape(rows, cols)
    score = table["score"].to_numpy().reshape(rows, cols)
    metadata: dict = {
        "windows": len(table),
        "unchanged": int(kept.sum()),
        "unchanged_share": float(kept.mean()),
        "path": dg.MetadataValue.path(str(path)),
    }
    if CONFIG.stac.endpoint == "demo":
        dates = stack_dates(stack)
        truth = change_truth(store.demo_world, part.region, dates, stack_grid(stack))
        quality = screening_quality(table, window_truth(truth, int(table["size"].iloc[0])))
        metadata.update({f"truth_{k}": v for k, v in quality.items()})
    png = figure_png(
        [
            ("change score", np.where(np.isfinite(score), score, np.nan)),
            ("kept (white)", kept.astype(float)),
        ],
        path.with_suffix(".png"),
        cmap="magma",
    )
    metadata.update(png_metadata(png, path.with_suffix(".png")))
    return dg.MaterializeResult(metadata=metadata)


def negative_pool(
    store: DataStore, part: RegionTime, negatives: str, bands: list[str]
) -> NegativePool | None:
    """Where negatives come from (config ``tiling.negatives``): ``same_scene`` (None), or
    ``other_region``: the unchanged windows of the next region of the config, same time
    partition."""
    if negatives == "same_scene":
        return None
    if negatives != "other_region":
        raise ValueError(
            f"tiling.negatives is {negatives!r} in {CONFIG.path}; "
            "use 'same_scene' or 'other_region'"
        )
    names = [r.name for r in CONFIG.regions]
    if len(names) < 2:
        raise ValueError(
            f"tiling.negatives: other_region needs two regions or more in {CONFIG.path}; "
            f"it lists {names}"
        )
    other = names[(names.index(part.region) + 1) % len(names)]
    screen_path = store.screen(other, part.time)
    if not screen_path.exists():
        raise ValueError(
            f"negatives come from region {other!r}, whose change screen for {part.time} is "
            f"missing: materialise `change_screen` for partition {other}|{part.time} first"
        )
    stack = open_stack(store.stack(other, part.time))  # StackSource reads only `bands`
    return NegativePool(StackSource(stack, bands), pd.read_csv(screen_path))


@dataclass(frozen=True)
class TilingInputs:
    """What `patch_triplets` tiles from: the partition's stack as a pixel source, its change
    screen, and the configuration's bands, settings and negative pool."""

    source: StackSource
    screen: pd.DataFrame
    bands: list[str]
    settings: TilingSettings
    negative_pool: NegativePool | None


def tiling_inputs(store: DataStore, part: RegionTime) -> TilingInputs:
    """The :class:`TilingInputs` of a partition, from the configuration's ``tiling`` section."""
    stack = open_stack(store.stack(part.region, part.time))  # StackSource reads only `bands`
    screen = pd.read_csv(store.screen(part.region, part.time))
    settings = CONFIG.tiling.model_dump()
    negatives = settings.pop("negatives")
    bands = list(settings.pop("bands"))
    pool = negative_pool(store, part, negatives, bands)
    return TilingInputs(StackSource(stack, bands), screen, bands, TilingSettings(**settings), pool)


def record_manifests(store: DataStore, part: RegionTime, shards: list[Path]) -> dict:
    """Write the triplet manifest of each of the partition's ``shards`` and record it in the
    store's provenance; return the provenance as the store now holds it."""
    provenance: dict = {}
    for shard in shards:
        patches = pd.read_csv(shard / "patches.csv")
        regions = {part.region, *patches["negative_region"].dropna().astype(str)}
        screens = {r: pd.read_csv(store.screen(r, part.time)) for r in regions}
        items = {r: json.loads(store.items(r, part.time).read_text())["features"] for r in regions}
        manifest = triplet_manifest(patches, shard.name, screens, items)
        digest = write_manifest(manifest_path(store.patch_store, shard.name), manifest)
        behind = {i for role in ROLES for ids in manifest[f"{role}_items"] for i in ids}
        provenance = record_manifest(
            store.patch_store,
            shard.name,
            digest,
            behind,
            product_level=product_level_of(CONFIG.stac.collection),
            gsd_m=CONFIG.grid.resolution_m,
        )
    return provenance


@dg.asset(partitions_def=REGION_TIMES, group_name=GROUP, deps=[change_screen], kinds={"zarr"})
def patch_triplets(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """Anchor / positive / negative crops of the unchanged windows, one shard per partition.

    Each shard gets a GeoParquet manifest (footprint, dates, STAC item ids, valid shares and
    change scores per triplet) and the store's ``provenance.json`` a digest over every shard's
    manifest, which the exported model card cites.
    """
    part = region_time(context)
    inputs = tiling_inputs(store, part)
    bands = inputs.bands
    shard_id = part.shard_id
    result = tile_to_store(
        inputs.source,
        inputs.screen,
        store.patch_store,
        shard_id,
        bands,
        inputs.settings,
        inputs.negative_pool,
    )
    (shard,) = result.shards
    provenance = record_manifests(store, part, [shard])
    metadata: dict = {
        "triplets": result.triplets,
        "bands": bands,
        "bytes_written": sum(f.stat().st_size for f in shard.rglob("*") if f.is_file()),
        "shard": dg.MetadataValue.path(str(shard)),
        "manifest": dg.MetadataValue.path(str(manifest_path(store.patch_store, shard_id))),
        "manifest_sha256": provenance["shards"][shard_id]["sha256"],
        "store_manifest_digest": provenance["manifest_digest"],
        "store_stac_items": provenance["stac_items"],
    }
    if result.triplets:
        shown = read_shard(store.patch_store, shard_id, slice(0, 4))
        rgb = [bands.index(b) for b in ("B04", "B03", "B02")]
        panels = []
        for i in range(min(4, result.triplets)):
            for role in ROLES:
                crop = shown[role][i][rgb].transpose(1, 2, 0)
                panels.append((f"{i} {role}", np.clip(crop / max(crop.max(), 1e-6), 0, 1)))
        preview = store.path("previews", f"{shard_id}.png")
        png = figure_png(panels, preview)
        metadata.update(png_metadata(png, preview, "triplets_preview"))
    return dg.MaterializeResult(metadata=metadata)
