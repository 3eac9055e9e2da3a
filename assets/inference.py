"""Inference assets: the pretrained model's dense features of every date of a partition's stack,
and the change maps between its consecutive dates, on the stack's grid.

Both run tile by tile (:mod:`matter_model.inference`), so a whole MGRS tile fits in the memory
of a few tiles; the model runs on CUDA when present. The feature window, the model output and the
smoothing are evaluation's (``evaluation`` in the project config), so the maps are those the
evaluation scores.
"""

import logging
from pathlib import Path
from typing import Any

import dagster as dg
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from scipy import ndimage

from assets.imagery import coregistered_stack
from assets.model import matter_pretrained
from assets.partitions import CONFIG, REGION_TIMES, region_time
from assets.previews import figure_png, png_metadata
from assets.resources import DataStore
from matter_model.atomic_io import atomic_directory
from matter_model.checkpoint import load_model
from matter_model.inference import (
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    change_mask,
    change_score,
    default_device,
    embed_dates,
)
from pipelines.dates import stack_dates
from pipelines.stack_store import open_stack

logger = logging.getLogger(__name__)

GROUP = "inference"
EMBEDDING = "embedding"
MASK_NODATA = 255  # the change mask's invalid pixels (0: unchanged, 1: changed)
PREVIEW_PX = 512  # previews of at most this many pixels a side per panel


class EmbeddingConfig(dg.Config):
    """How the model is tiled: memory grows with ``(tile + 2 * overlap)`` squared."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP  # context px per side; blended over its central half
    ramp: str = "cosine"  # or linear: the blending weights across a seam


class ChangeMapConfig(dg.Config):
    """How the change score is cut: Otsu per pair of dates, or a fixed threshold."""

    threshold: float | None = None
    cloud_margin_px: int = 3  # invalid pixels grown by this much: cloud edges escape the SCL


def create_embeddings(
    stack: xr.Dataset, path: Path, features: int, tile: int, attrs: dict[str, Any]
) -> zarr.Array:
    """An empty float16 ``embedding (time, feature, y, x)`` zarr with the stack's coordinates,
    ``crs`` and ``transform`` (in chunks of one date and ``tile`` px), to be filled tile by tile."""
    shape = (stack.sizes["time"], features, stack.sizes["y"], stack.sizes["x"])
    chunks = (1, features, min(tile, shape[2]), min(tile, shape[3]))
    template = xr.Dataset(
        {EMBEDDING: (("time", "feature", "y", "x"), da.zeros(shape, dtype=np.float16))},
        coords={"time": stack.time, "y": stack.y, "x": stack.x},
        attrs={**{k: stack.attrs[k] for k in ("crs", "transform", "region")}, **attrs},
    )
    template.to_zarr(
        path,
        mode="w",
        zarr_format=3,
        consolidated=False,
        compute=False,  # metadata and coordinates only; the tiles come one by one
        encoding={EMBEDDING: {"chunks": chunks, "_FillValue": None}},
    )
    return zarr.open_group(path, mode="r+", zarr_format=3)[EMBEDDING]


def write_embeddings(
    stack: xr.Dataset,
    model: Any,
    model_config: dict,
    path: Path,
    settings: EmbeddingConfig,
    device: str,
) -> Path:
    """Every date's features as float16 zarr ``embedding (time, feature, y, x)`` with the stack's
    coordinates and ``crs`` / ``transform``, written atomically one tile at a time."""
    reflectance = stack.reflectance.sel(band=list(model_config["bands"])).data
    window, output = CONFIG.evaluation.window, CONFIG.evaluation.features
    with atomic_directory(path) as tmp:
        target: list[zarr.Array] = []

        def write(date: int, rows: slice, cols: slice, block: np.ndarray) -> None:
            if not target:  # the feature count is known from the first tile
                attrs = {"window": window, "output": output}
                target.append(create_embeddings(stack, tmp, len(block), settings.tile, attrs))
            target[0][date, :, rows, cols] = block.astype(np.float16)

        embed_dates(
            model,
            model_config,
            reflectance,
            stack.valid.data,
            write,
            window=window,
            output=output,
            tile=settings.tile,
            overlap=settings.overlap,
            ramp=settings.ramp,
            device=device,
        )
    return path


def write_cog(
    values: np.ndarray, like: xr.Dataset, path: Path, nodata: float, resampling: str
) -> None:
    """A single-band COG with overviews on the grid of ``like`` (its y/x, crs and transform)."""
    raster = xr.DataArray(values, dims=("y", "x"), coords={"y": like.y, "x": like.x})
    raster.rio.write_crs(like.attrs["crs"], inplace=True)  # not inplace: a copy of the map
    raster.rio.write_transform(Affine(*like.attrs["transform"]), inplace=True)
    raster.rio.write_nodata(nodata, inplace=True)
    raster.rio.to_raster(
        path, driver="COG", compress="deflate", overview_resampling=resampling, blocksize=256
    )


def write_change_maps(
    stack: xr.Dataset, embeddings: xr.Dataset, folder: Path, settings: ChangeMapConfig
) -> list[dict]:
    """For each pair of consecutive dates, ``<d0>_<d1>_score.tif`` (float32, NaN where invalid)
    and ``<d0>_<d1>_change.tif`` (uint8: 1 changed, 0 not, 255 invalid), plus ``preview.png``;
    the folder is replaced atomically. Returns one summary per pair."""
    sigma = CONFIG.evaluation.sigma
    dates = stack_dates(stack)
    features = embeddings[EMBEDDING].data
    step = -(-max(stack.sizes["y"], stack.sizes["x"]) // PREVIEW_PX)
    panels, pairs = [], []
    with atomic_directory(folder) as tmp:
        for t in range(len(dates) - 1):
            name = f"{dates[t]}_{dates[t + 1]}"
            valid = np.asarray(stack.valid.data[t] & stack.valid.data[t + 1], dtype=bool)
            if settings.cloud_margin_px:
                valid = ndimage.binary_erosion(
                    valid, iterations=settings.cloud_margin_px, border_value=1
                )
            # A map is the size of the region: each is made in place, never copied whole.
            score = change_score(features[t], features[t + 1], sigma, block=256)
            mask, threshold = change_mask(score, valid, settings.threshold)
            score[~valid] = np.nan
            write_cog(score, stack, tmp / f"{name}_score.tif", np.nan, "average")
            share = float(mask.sum() / max(valid.sum(), 1))
            coded = mask.astype(np.uint8)
            coded[~valid] = MASK_NODATA
            write_cog(coded, stack, tmp / f"{name}_change.tif", MASK_NODATA, "nearest")
            if not valid.any():
                logger.warning("%s: no pixel valid at both dates, nothing marked changed", name)
            threshold_or_none = threshold if np.isfinite(threshold) else None  # JSON has no NaN
            pairs.append({"pair": name, "threshold": threshold_or_none, "changed_share": share})
            preview = coded[::step, ::step].astype(np.float32)
            preview[preview == MASK_NODATA] = 0.5
            thumbnail = score[::step, ::step].copy()  # not a view that keeps the map alive
            panels += [(f"{name} score", thumbnail), (f"changed {share:.1%}", preview)]
        if panels:
            figure_png(panels, tmp / "preview.png", cmap="magma")
    return pairs


@dg.asset(
    partitions_def=REGION_TIMES,
    group_name=GROUP,
    deps=[coregistered_stack, matter_pretrained],
    kinds={"pytorch", "zarr"},
)
def material_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingConfig, store: DataStore
) -> dg.MaterializeResult:
    """The pretrained model's dense per-pixel features of every date of the stack (float16 zarr
    on the stack's grid): evaluation's model output and feature window, run tile by tile."""
    part = region_time(context)
    device = default_device()
    model, model_config = load_model(store.model_dir / "checkpoint.pt", device)
    stack = open_stack(store.stack(part.region, part.time))
    path = write_embeddings(
        stack, model, model_config, store.embeddings(part.region, part.time), config, device
    )
    written = xr.open_zarr(path, consolidated=False, zarr_format=3)
    nbytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return dg.MaterializeResult(
        metadata={
            "dates": stack_dates(written),
            "features": written.sizes["feature"],
            "output": written.attrs["output"],
            "window": written.attrs["window"],
            "crs": written.attrs["crs"],
            "shape_px": [written.sizes["y"], written.sizes["x"]],
            "device": device,
            "tile_px": config.tile,
            "bytes_written": nbytes,
            "path": dg.MetadataValue.path(str(path)),
        }
    )


@dg.asset(
    partitions_def=REGION_TIMES,
    group_name=GROUP,
    deps=[coregistered_stack, material_embeddings],
    kinds={"cog"},
)
def change_maps(
    context: dg.AssetExecutionContext, config: ChangeMapConfig, store: DataStore
) -> dg.MaterializeResult:
    """Change between each pair of consecutive dates: the features' distance, smoothed as in
    evaluation, and its mask (Otsu's threshold per pair, or the configured one), as COGs."""
    part = region_time(context)
    stack = open_stack(store.stack(part.region, part.time))
    embeddings = xr.open_zarr(
        store.embeddings(part.region, part.time), consolidated=False, zarr_format=3
    )
    folder = store.change_maps(part.region, part.time)
    pairs = write_change_maps(stack, embeddings, folder, config)
    if not pairs:
        context.log.warning(f"{part.key} has one date only: no change map")
    preview = folder / "preview.png"
    return dg.MaterializeResult(
        metadata={
            "pairs": len(pairs),
            "changed_share": dg.MetadataValue.json({p["pair"]: p["changed_share"] for p in pairs}),
            "changed_share_mean": float(np.mean([p["changed_share"] for p in pairs]))
            if pairs
            else 0.0,
            "thresholds": dg.MetadataValue.json({p["pair"]: p["threshold"] for p in pairs}),
            "crs": stack.attrs["crs"],
            "path": dg.MetadataValue.path(str(folder)),
            **(png_metadata(preview.read_bytes(), preview) if preview.exists() else {}),
        }
    )
