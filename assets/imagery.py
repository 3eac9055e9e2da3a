"""Imagery assets: Sentinel-2 L2A items from STAC, and their co-registered stack per partition."""

import json

import dagster as dg
import numpy as np

from assets.config import endpoint_url
from assets.dask_resource import DaskCluster
from assets.partitions import CONFIG, REGION_TIMES, RegionTime, region_time
from assets.previews import figure_png, png_metadata, true_colour
from assets.resources import DataStore, StacApi
from matter_model.atomic_io import atomic_write_text
from pipelines.coregistration import coregister
from pipelines.dates import item_date, stack_dates
from pipelines.grid import region_grid, utm_epsg
from pipelines.stac import StacSearchError, item_mgrs_tile, search_items
from pipelines.stac.hrefs import HrefPolicy
from pipelines.stac.items import check_asset_hrefs, split_usable
from pipelines.stac.snapshot import file_sha256, read_snapshot, write_snapshot
from pipelines.stack_store import open_stack, write_stack

GROUP = "imagery"


def href_policy(endpoint: str) -> HrefPolicy:
    """Where the asset hrefs of ``endpoint``'s items may point: its hosts, the configured
    ``stac.asset_hosts`` and ``href_rewrites``; local files only for a local endpoint."""
    return HrefPolicy.for_endpoint(endpoint, CONFIG.stac.asset_hosts, CONFIG.stac.href_rewrites)


def search_usable(stac: StacApi, part: RegionTime) -> tuple[list[dict], dict[str, str], str]:
    """The partition's usable items from the STAC API, the skipped ones' reasons by item id, and
    the endpoint searched; no usable item is an error."""
    request = stac.request(CONFIG.region(part.region), part.start, part.end)
    found = search_items(request)
    items, skipped = split_usable(found)
    check_asset_hrefs(items, href_policy(stac.url))  # before anything is written or read
    reasons = {s.item_id: s.reason for s in skipped}
    if not items:
        raise StacSearchError(
            f"none of the {len(found)} items found for {part.region} {part.time} is usable: "
            f"{reasons}"
        )
    return items, reasons, request.url if not stac.is_demo else "demo world (rustac serve)"


@dg.asset(partitions_def=REGION_TIMES, group_name=GROUP, kinds={"stac"})
def stac_items(
    context: dg.AssetExecutionContext, stac: StacApi, store: DataStore
) -> dg.MaterializeResult:
    """Sentinel-2 L2A items of the partition's region and time span, under the cloud-cover limit.

    Items the pipeline cannot read (missing bands, projection or processing baseline) are
    skipped; their count and reasons go into the metadata. The usable items are frozen as a
    STAC-GeoParquet snapshot (its path and SHA-256 in the metadata); the JSON beside it, which
    the stack reads, holds the items as read back from the snapshot. With ``stac.replay`` the
    snapshot is read instead of searching, so the partition is rebuilt from the same items.
    """
    part = region_time(context)
    snapshot = store.items_snapshot(part.region, part.time)
    if stac.replay:
        reasons: dict[str, str] = {}
        endpoint = "replay of the snapshot (stac.replay)"
        context.log.info(f"stac.replay: reading the items of {part.key} from {snapshot}")
    else:
        found, reasons, endpoint = search_usable(stac, part)
        write_snapshot(snapshot, found)
    items = read_snapshot(snapshot, part.key)  # downstream reads what the snapshot holds
    path = store.items(part.region, part.time)
    atomic_write_text(path, json.dumps({"type": "FeatureCollection", "features": items}))
    clouds = [it["properties"]["eo:cloud_cover"] for it in items]
    return dg.MaterializeResult(
        metadata={
            "items": len(items),
            "dates": sorted({item_date(it) for it in items}),
            "tiles": sorted({item_mgrs_tile(it) or "?" for it in items}),
            "items_skipped": len(reasons),
            "skipped_reasons": dg.MetadataValue.json(reasons),
            "mean_cloud_cover_pct": float(np.mean(clouds)),
            "endpoint": endpoint,
            "path": dg.MetadataValue.path(str(path)),
            "snapshot": dg.MetadataValue.path(str(snapshot)),
            "snapshot_sha256": file_sha256(snapshot),
        }
    )


@dg.asset(partitions_def=REGION_TIMES, group_name=GROUP, deps=[stac_items], kinds={"zarr"})
def coregistered_stack(
    context: dg.AssetExecutionContext, store: DataStore, dask_cluster: DaskCluster
) -> dg.MaterializeResult:
    """The partition's dates on one 10 m UTM grid, shifts corrected, SCL valid mask, in zarr.

    Computed in blocks on the step's dask cluster and streamed into the store, so a full tile
    fits in the memory of a few blocks; the metadata and preview are read back from the store.
    """
    part = region_time(context)
    region = CONFIG.region(part.region)
    items = json.loads(store.items(part.region, part.time).read_text())["features"]
    check_asset_hrefs(items, href_policy(endpoint_url(CONFIG.stac.endpoint)))
    # The UTM zone of the region's centre, whatever zones its items come in: every partition
    # of a region then shares one grid.
    lon0, lat0, lon1, lat1 = region.bbox
    epsg = utm_epsg((lon0 + lon1) / 2, (lat0 + lat1) / 2)
    grid = region_grid(region.bbox, epsg, CONFIG.grid.resolution_m)
    stack = coregister(
        items,
        grid,
        region=part.region,
        href_rewrites=list(CONFIG.stac.href_rewrites),
        chunk_px=CONFIG.grid.chunk_px,
        sample_px=CONFIG.grid.sample_px,
    )
    path = write_stack(stack, store.stack(part.region, part.time))
    stack = open_stack(path)
    dates = stack_dates(stack)
    rgb = ["B04", "B03", "B02"]
    step = -(-max(grid.height, grid.width) // 1024)  # previews of at most 1024 px a side
    preview = stack.reflectance.sel(band=rgb)[:, :, ::step, ::step].values
    png = figure_png(
        [(d, true_colour(preview[t], rgb)) for t, d in enumerate(dates)],
        path.with_suffix(".png"),
    )
    nbytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return dg.MaterializeResult(
        metadata={
            "dates": dates,
            "crs": stack.attrs["crs"],
            "shape_px": [grid.height, grid.width],
            "valid_fraction": dg.MetadataValue.json(
                dict(zip(dates, stack.valid_fraction.values.round(4).tolist(), strict=True))
            ),
            "cloud_fraction_mean": float(1 - stack.valid_fraction.values.mean()),
            "shift_px": dg.MetadataValue.json(
                dict(zip(dates, stack.shift_px.values.round(3).tolist(), strict=True))
            ),
            "max_abs_shift_px": float(np.abs(stack.shift_px.values).max()),
            "dask_scheduler": dask_cluster.client.scheduler.address,
            "bytes_written": nbytes,
            "path": dg.MetadataValue.path(str(path)),
            **png_metadata(png, path.with_suffix(".png")),
        }
    )
