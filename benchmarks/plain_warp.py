"""A plain GDAL warp of a stack's assets onto a grid, no shift measured or corrected: the floor
that co-registration's cost is compared with.

Each date's 12 bands (bilinear) and SCL (nearest) are read through ``WarpedVRT`` windows onto the
same grid and blocks as :func:`pipelines.coregistration.coregister` reads them, scaled to
reflectance with the valid mask, and written by :func:`pipelines.stack_store.write_stack`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import dask.array as da
import numpy as np
import xarray as xr
from rasterio.enums import Resampling
from rasterio.windows import Window

from pipelines.bands import SCL, SCL_INVALID_DEFAULT, SPECTRAL_BANDS
from pipelines.grid import Grid, lazy_blocks
from pipelines.scene_reader import read_asset
from pipelines.stac.items import asset_path

BANDS = [b.name for b in SPECTRAL_BANDS]


def warp_block(item: dict, grid: Grid, window: Window) -> np.ndarray:
    """(band + 1, y, x) float32 over ``window``: reflectance (NaN where no data), valid mask."""
    dn = np.stack(
        [read_asset(asset_path(item, b), grid, Resampling.bilinear, window)[0] for b in BANDS]
    )
    scl = read_asset(asset_path(item, SCL.name), grid, Resampling.nearest, window)[0]
    present = dn > 0
    out = np.empty((len(BANDS) + 1, *dn.shape[1:]), dtype=np.float32)
    np.multiply(dn, np.float32(1e-4), out=out[:-1])
    out[:-1][~present] = np.nan
    out[-1] = present.all(axis=0) & ~np.isin(scl, SCL_INVALID_DEFAULT)
    return out


def plain_warp_stack(items: Sequence[dict], grid: Grid, chunk_px: int) -> xr.Dataset:
    """The items (one date each) warped onto ``grid`` as a lazy stack in ``chunk_px`` blocks."""
    dates = [
        lazy_blocks(partial(warp_block, item, grid), grid, chunk_px, (len(BANDS) + 1,), np.float32)
        for item in items
    ]
    cube = da.stack(dates)
    return xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), cube[:, :-1]),
            "valid": (("time", "y", "x"), cube[:, -1] > 0.5),
        },
        coords={"band": BANDS},
    )
