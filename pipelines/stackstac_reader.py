"""Reading STAC items onto a grid with stackstac: the same lazy per-date arrays as
:mod:`pipelines.scene_reader`, built from stackstac's lazy stacks.

stackstac gets the raw item dicts (pystac would rewrite ``proj:epsg`` to ``proj:code``, which
stackstac does not read), DN as float32 with NaN for no data (``rescale=False``): the band scale
and the processing-baseline offset are applied here, as :func:`scene_reader.read_item` does.
Spectral bands are resampled bilinearly and the SCL by nearest neighbour, as there; stackstac
warps each asset through its own ``WarpedVRT``. Asset hrefs are resolved (rewritten, signed) when
the graph is built, not just before each read.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import dask.array as da
import numpy as np
import stackstac
from rasterio.enums import Resampling
from rasterio.windows import Window

from pipelines.bands import SCL, asset_key
from pipelines.grid import CoregistrationError, Grid
from pipelines.scene_reader import mosaic_scenes, mosaic_scl
from pipelines.stac.items import asset_path, band_scale, reflectance_offset


def _local_item(item: dict, names: Sequence[str], href_rewrites: Sequence[tuple[str, str]]) -> dict:
    """A copy of the raw item with only the assets of ``names``, their hrefs resolved."""
    local = copy.deepcopy({k: v for k, v in item.items() if k != "assets"})
    local["assets"] = {}
    for name in names:
        asset = copy.deepcopy(item["assets"][asset_key(item, name)])
        asset["href"] = asset_path(item, name, href_rewrites)
        local["assets"][name] = asset
    return local


def asset_stack(
    item: dict,
    names: Sequence[str],
    grid: Grid,
    resampling: Resampling,
    href_rewrites: Sequence[tuple[str, str]],
    chunk_px: int,
) -> da.Array:
    """The item's DN of bands ``names`` on ``grid``: lazy (band, y, x) float32, NaN where no data
    (DN 0 too, as the hand-written reader treats it), the bands in one ``chunk_px`` block."""
    stack = stackstac.stack(
        [_local_item(item, names, href_rewrites)],
        assets=list(names),
        epsg=grid.epsg,
        resolution=grid.transform.a,
        bounds=grid.bounds,
        snap_bounds=False,
        resampling=resampling,
        chunksize=(1, len(names), chunk_px, chunk_px),
        dtype=np.dtype("float32"),
        fill_value=np.float32(np.nan),
        rescale=False,
        sortby_date=False,
        properties=False,
        band_coords=False,
    )
    if (
        stack.shape[2:] != (grid.height, grid.width)
        or tuple(stack.attrs["transform"])[:6] != tuple(grid.transform)[:6]
    ):
        raise CoregistrationError(
            f"stackstac laid item {item['id']} on a {stack.shape[2:]} grid at "
            f"{stack.attrs['transform']}, not the {grid.height} x {grid.width} grid at "
            f"{grid.transform}; use a grid whose bounds are whole pixels of its resolution"
        )
    dn = stack.data[0]
    return da.where(dn > 0, dn, np.float32(np.nan))


def _scene(
    item: dict,
    grid: Grid,
    bands: Sequence[str],
    href_rewrites: Sequence[tuple[str, str]],
    chunk_px: int,
) -> da.Array:
    """One scene's DN (band + 1, y, x): the bands (bilinear), then the SCL (nearest)."""
    dn = asset_stack(item, bands, grid, Resampling.bilinear, href_rewrites, chunk_px)
    scl = asset_stack(item, [SCL.name], grid, Resampling.nearest, href_rewrites, chunk_px)
    return da.concatenate([dn, scl]).rechunk({0: -1})


def _reflectance(block: np.ndarray, scales: np.ndarray, offset: np.float32) -> tuple:
    """A scene block's (reflectance, SCL uint8) from its DN block (band + 1, y, x)."""
    dn = block[:-1]
    reflectance = np.where(dn > 0, dn * scales[:, None, None] + offset, np.float32(np.nan))
    return reflectance.astype(np.float32), _scl(block[-1])


def _scl(plane: np.ndarray) -> np.ndarray:
    """SCL classes (uint8, 0 for no data) from a float32 plane with NaN for no data."""
    return np.nan_to_num(plane, nan=0.0).astype(np.uint8)


def _mosaic_block(
    *blocks: np.ndarray, scales: list, offsets: list, invalid_scl: Sequence[int]
) -> np.ndarray:
    """The scenes' DN blocks of one date mosaicked by :func:`scene_reader.mosaic_scenes`."""
    return mosaic_scenes(
        (_reflectance(b, s, o) for b, s, o in zip(blocks, scales, offsets, strict=True)),
        invalid_scl,
    )


def date_mosaic(
    scenes: Sequence[dict],
    grid: Grid,
    bands: Sequence[str],
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    chunk_px: int,
) -> da.Array:
    """One date's mosaic as a lazy dask array (band + 1, y, x), the valid mask last."""
    return da.map_blocks(
        _mosaic_block,
        *(_scene(s, grid, bands, href_rewrites, chunk_px) for s in scenes),
        scales=[np.array([band_scale(s, b) for b in bands], dtype=np.float32) for s in scenes],
        offsets=[np.float32(reflectance_offset(s)) for s in scenes],
        invalid_scl=tuple(invalid_scl),
        dtype=np.float32,
    )


def mosaic_block(
    scenes: Sequence[dict],
    grid: Grid,
    bands: Sequence[str],
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    window: Window,
) -> np.ndarray:
    """One date's mosaic (band + 1, y, x) over ``window`` of ``grid``: a stackstac stack of the
    window alone, computed in the calling task, so that a shifted block is read with its own
    margin, as :func:`scene_reader.mosaic_block` reads it, and waits on no other block."""
    part = grid.part(window)
    side = max(part.height, part.width)
    mosaic = date_mosaic(scenes, part, bands, invalid_scl, href_rewrites, side)
    return mosaic.compute(scheduler="sync")


def _valid_block(*planes: np.ndarray, invalid_scl: Sequence[int]) -> np.ndarray:
    """Valid SCL classes of one date's mosaicked SCL block."""
    return ~np.isin(mosaic_scl(_scl(p) for p in planes), list(invalid_scl))


def scl_valid(
    scenes: Sequence[dict],
    grid: Grid,
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    chunk_px: int,
) -> da.Array:
    """One date's SCL-valid mask as a lazy dask array (y, x) bool, read from the SCL alone."""
    planes = [
        asset_stack(s, [SCL.name], grid, Resampling.nearest, href_rewrites, chunk_px)[0]
        for s in scenes
    ]
    return da.map_blocks(_valid_block, *planes, invalid_scl=tuple(invalid_scl), dtype=bool)
