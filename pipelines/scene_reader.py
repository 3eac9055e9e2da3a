"""Reading STAC items onto a grid: assets warped to the grid, scenes of a date mosaicked.

Every read takes a window of the grid, so the blocks of a tile can be read independently and in
parallel; :func:`date_mosaic` wraps them as one lazy dask array per date.

Each file is warped by its own georeference, so a file whose CRS is not the one its item
declares (replaced, re-exported or mislabelled) would land its pixels elsewhere, silently: a
mislabelled datum puts them tens of metres off, another zone off the grid. Such a file is refused
with an error naming it and both CRSs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

import dask.array as da
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipelines.bands import SCL
from pipelines.grid import CoregistrationError, Grid, lazy_blocks
from pipelines.redact import redact_urls
from pipelines.stac.items import asset_epsg, asset_path, band_scale, reflectance_offset


def _check_crs(path: str, crs: CRS | None, epsg: int) -> None:
    """Refuse a file whose CRS is not ``EPSG:epsg``, the one its STAC item declares."""
    if crs is not None and (crs == CRS.from_epsg(epsg) or crs.to_epsg() == epsg):
        return
    found = "no CRS" if crs is None else f"CRS {crs.to_string()}"
    raise CoregistrationError(
        f"{redact_urls(path)} has {found}, but its STAC item declares EPSG:{epsg}: the file was "
        "replaced, re-exported or mislabelled, and warping it by its own georeference would put "
        "its pixels in the wrong place. Download the file again from the provider, or fix the "
        "item's proj:epsg if the file is right."
    )


def read_asset(
    path: str,
    grid: Grid,
    resampling: Resampling,
    window: Window | None = None,
    epsg: int | None = None,
) -> tuple[np.ndarray, float | None]:
    """One asset resampled onto ``grid`` by its own georeference (so downsampled mirrors work).

    ``window`` (in grid pixels) reads only that part of the grid: the warp is computed for the
    window alone, so blocks of a tile can be read independently and in parallel. ``epsg``, the
    CRS the asset's item declares, is checked against the file's before anything is read.
    """
    try:
        with rasterio.open(path) as src:
            if epsg is not None:
                _check_crs(path, src.crs, epsg)
            return _warp(src, grid, resampling, window), src.nodata
    except rasterio.RasterioIOError as err:
        raise CoregistrationError(
            f"cannot read {redact_urls(path)}: {redact_urls(err)}. Check the asset href, or map "
            "it to a local mirror with `href_rewrites` in the config."
        ) from None


def _warp(
    src: rasterio.DatasetReader, grid: Grid, resampling: Resampling, window: Window | None
) -> np.ndarray:
    """``window`` of ``grid`` read from ``src`` through a WarpedVRT (no data as 0)."""
    with WarpedVRT(
        src,
        crs=f"EPSG:{grid.epsg}",
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=resampling,
        src_nodata=src.nodata if src.nodata is not None else 0,
        nodata=0,
    ) as vrt:
        return vrt.read(1, window=window)


def read_item(
    item: dict,
    grid: Grid,
    bands: Sequence[str],
    href_rewrites: Sequence[tuple[str, str]] = (),
    window: Window | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance (band, y, x) float32 with NaN for no data, and the SCL (y, x) uint8, on grid.

    Reflectance bands are resampled bilinearly, the SCL by nearest neighbour; ``window`` limits
    the read to that part of the grid.
    """
    offset = reflectance_offset(item)
    height, width = (window.height, window.width) if window else (grid.height, grid.width)
    out = np.full((len(bands), height, width), np.nan, dtype=np.float32)
    for i, name in enumerate(bands):
        scale = band_scale(item, name)
        path = asset_path(item, name, href_rewrites)
        dn, _ = read_asset(path, grid, Resampling.bilinear, window, asset_epsg(item, name))
        present = dn > 0
        out[i][present] = dn[present].astype(np.float32) * scale + offset
    path = asset_path(item, SCL.name, href_rewrites)
    scl, _ = read_asset(path, grid, Resampling.nearest, window, asset_epsg(item, SCL.name))
    return out, scl.astype(np.uint8)


def mosaic_scenes(
    scenes: Iterable[tuple[np.ndarray, np.ndarray]], invalid_scl: Sequence[int]
) -> np.ndarray:
    """One date's scenes, each (reflectance, SCL) on the same window, mosaicked: (band + 1, y, x).

    The planes are the reflectance bands, then the valid mask (1 where data is present in every
    band and the SCL class is not in ``invalid_scl``, else 0), so that one block carries
    everything the shift correction resamples. The first scene wins where scenes overlap.
    """
    scenes = iter(scenes)
    reflectance, scl = next(scenes)
    for more, more_scl in scenes:
        empty = np.isnan(reflectance).all(axis=0)
        reflectance[:, empty] = more[:, empty]
        scl[empty] = more_scl[empty]
    valid = ~np.isin(scl, list(invalid_scl)) & np.isfinite(reflectance).all(axis=0)
    return np.concatenate([reflectance, valid[None].astype(np.float32)])


def mosaic_block(
    scenes: Sequence[dict],
    grid: Grid,
    bands: Sequence[str],
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    window: Window | None = None,
) -> np.ndarray:
    """One date's scenes read over ``window`` and mosaicked by :func:`mosaic_scenes`."""
    return mosaic_scenes(
        (read_item(scene, grid, bands, href_rewrites, window) for scene in scenes), invalid_scl
    )


def mosaic_scl(scls: Iterable[np.ndarray]) -> np.ndarray:
    """One date's SCL planes mosaicked: the first scene wins, later ones fill its gaps (SCL 0)."""
    scls = iter(scls)
    scl = next(scls)
    for more in scls:
        scl = np.where(scl == 0, more, scl)
    return scl


def scl_valid_block(
    scenes: Sequence[dict],
    grid: Grid,
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    window: Window | None = None,
) -> np.ndarray:
    """One date's SCL mosaic over ``window`` as a bool mask of valid classes.

    Read from the SCL alone (one band, nearest neighbour), it is the cheap mask that picks the
    reference date and the shift sample before any reflectance is read; gaps are SCL 0.
    """
    scl = mosaic_scl(
        read_asset(
            asset_path(scene, SCL.name, href_rewrites),
            grid,
            Resampling.nearest,
            window,
            asset_epsg(scene, SCL.name),
        )[0]
        for scene in scenes
    )
    return ~np.isin(scl, list(invalid_scl))


def scl_valid(
    scenes: Sequence[dict],
    grid: Grid,
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    chunk_px: int,
) -> da.Array:
    """One date's :func:`scl_valid_block` as a lazy dask array (y, x), one task per block."""
    read = partial(scl_valid_block, scenes, grid, invalid_scl, href_rewrites)
    return lazy_blocks(read, grid, chunk_px, (), bool)


def date_mosaic(
    scenes: Sequence[dict],
    grid: Grid,
    bands: Sequence[str],
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    chunk_px: int,
) -> da.Array:
    """One date's mosaic as a lazy dask array (band + 1, y, x), one task per block."""
    read = partial(mosaic_block, scenes, grid, bands, invalid_scl, href_rewrites)
    return lazy_blocks(read, grid, chunk_px, (len(bands) + 1,), np.float32)
