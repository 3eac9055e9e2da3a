"""The target grid: a north-up 10 m UTM pixel grid, snapped to the Sentinel-2 grid, in blocks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from affine import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window


class CoregistrationError(RuntimeError):
    """The items cannot be brought onto one grid; the message says why and what to do."""


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: CRS, affine transform and shape."""

    epsg: int
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        return (
            left,
            top + self.height * self.transform.e,
            left + self.width * self.transform.a,
            top,
        )

    def part(self, window: Window) -> Grid:
        """The grid of ``window``'s pixels alone: the same pixels, its origin at the window's."""
        return Grid(
            epsg=self.epsg,
            transform=self.transform * Affine.translation(window.col_off, window.row_off),
            width=int(window.width),
            height=int(window.height),
        )

    @property
    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre (y, x) coordinates."""
        t = self.transform
        x = t.c + (np.arange(self.width) + 0.5) * t.a
        y = t.f + (np.arange(self.height) + 0.5) * t.e
        return y, x


def utm_epsg(lon: float, lat: float) -> int:
    """The WGS84 / UTM zone EPSG code of a point (326xx north, 327xx south)."""
    zone = int((lon + 180) // 6) + 1
    return (32600 if lat >= 0 else 32700) + min(zone, 60)


def region_grid(bbox: Sequence[float], epsg: int, resolution: float = 10.0) -> Grid:
    """The grid covering a lon/lat bbox in ``epsg``, snapped outward to the S2 10 m grid."""
    left, bottom, right, top = transform_bounds("EPSG:4326", f"EPSG:{epsg}", *bbox)
    left, bottom = (np.floor(v / resolution) * resolution for v in (left, bottom))
    right, top = (np.ceil(v / resolution) * resolution for v in (right, top))
    return Grid(
        epsg=epsg,
        transform=Affine(resolution, 0.0, left, 0.0, -resolution, top),
        width=int(round((right - left) / resolution)),
        height=int(round((top - bottom) / resolution)),
    )


def block_windows(grid: Grid, chunk_px: int) -> list[list[Window]]:
    """The grid cut into rows of ``chunk_px`` square windows (the last row and column smaller)."""
    if chunk_px < 1:
        raise CoregistrationError(f"chunk_px must be a positive number of pixels, not {chunk_px}")
    return [
        [
            Window(x0, y0, min(chunk_px, grid.width - x0), min(chunk_px, grid.height - y0))
            for x0 in range(0, grid.width, chunk_px)
        ]
        for y0 in range(0, grid.height, chunk_px)
    ]


def lazy_blocks(
    read: Callable[[Window], np.ndarray],
    grid: Grid,
    chunk_px: int,
    planes: tuple[int, ...],
    dtype: type,
) -> da.Array:
    """The grid as a lazy dask array ``(*planes, y, x)`` of ``dtype``, one task per
    :func:`block_windows` block, each computed by ``read(window)``."""
    task = dask.delayed(read)
    return da.block(
        [
            [da.from_delayed(task(w), shape=(*planes, w.height, w.width), dtype=dtype) for w in row]
            for row in block_windows(grid, chunk_px)
        ]
    )
