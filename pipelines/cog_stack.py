"""The dates of one Sentinel-2 tile read straight from its COGs, fast, a strip of rows at a time.

The L2A bands of one MGRS tile share one grid: a 20 m or 60 m pixel is exactly a 2 x 2 or 6 x 6
block of 10 m pixels. So no band needs warping onto the 10 m grid: each is decoded at its native
resolution (GDAL decodes the blocks of one read in ``threads`` threads) and its pixels repeated
k x k with numpy, which keeps the measured values instead of inventing interpolated ones. Files
stay open for the whole run, and rows are read a strip at a time, so memory follows the strip,
not the scene. This is the pixel source :func:`pipelines.tiling.tile_to_store` uses when the
dates of a region come as COGs already on one tile grid.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import rasterio
from affine import Affine

from matter_model.inputs import REFLECTANCE
from matter_model.patch_store import ENCODINGS
from pipelines.bands import SCL, SCL_INVALID_DEFAULT
from pipelines.blocks import as_blocks
from pipelines.dates import item_date
from pipelines.grid import Grid
from pipelines.redact import redact_urls
from pipelines.stac.items import asset_path, reflectance_offset

L2A_SCALE = 1e-4  # DN to reflectance, before the baseline's offset
# The patch store's reflectance integers: the L2A DN of processing baseline 04.00 (see
# matter_model.patch_store), which a strip writes without going through float.
STORED = ENCODINGS[REFLECTANCE]


class CogStackError(ValueError):
    """COGs that cannot be read as one tile grid; the message says which file and why."""


@dataclass(frozen=True)
class CogScene:
    """One date of a tile: a COG per band (ESA name to path), its SCL COG, and the BOA offset."""

    date: str
    bands: Mapping[str, str]
    scl: str
    offset: float = 0.0

    @classmethod
    def from_item(
        cls,
        item: dict,
        bands: Sequence[str],
        href_rewrites: Sequence[tuple[str, str]] = (),
    ) -> CogScene:
        """The scene of a STAC item, hrefs mapped through ``href_rewrites`` to local files."""
        return cls(
            date=item_date(item),
            bands={name: asset_path(item, name, href_rewrites) for name in bands},
            scl=asset_path(item, SCL.name, href_rewrites),
            offset=reflectance_offset(item),
        )


def upsampled(native: np.ndarray, k: int, y: int, x: int, height: int, width: int) -> np.ndarray:
    """Pixels ``[y, y + height) x [x, x + width)`` of ``native`` seen on a grid ``k`` times finer:
    each native pixel repeated k x k, only over the part asked for (a view when k is 1)."""
    if k == 1:
        return native[y : y + height, x : x + width]
    return upsampled_into(np.empty((height, width), native.dtype), native, k, y, x)


def upsampled_into(out: np.ndarray, native: np.ndarray, k: int, y: int, x: int) -> np.ndarray:
    """Fill ``out`` (h x w) with grid pixels ``[y, y + h) x [x, x + w)`` of ``native`` seen on a
    grid ``k`` times finer, and return it. Columns are repeated first; rows are then written
    k at a time from one repeated row where the crop starts and ends on whole native rows, or
    gathered."""
    height, width = out.shape
    if k == 1:
        out[...] = native[y : y + height, x : x + width]
        return out
    part = _native_part(native, k, y, x, height, width)
    columns = _repeated_columns(part, k)[:, x % k : x % k + width]
    if y % k == 0 and height % k == 0 and out.flags.c_contiguous:
        out.reshape(height // k, k, width)[...] = columns[:, None, :]
    else:
        out[...] = columns[(y % k + np.arange(height)) // k]
    return out


def _repeated_columns(part: np.ndarray, k: int) -> np.ndarray:
    """``part`` with each column repeated ``k`` times. Where k copies of a pixel fill one wider
    unsigned integer (a uint16 twice in a uint32, a float32 twice in a uint64, a bool up to 8
    times), one multiplication by 0x...0101 writes all k: numpy's ``repeat`` copies them pixel
    by pixel, several times slower."""
    wide = part.itemsize * k
    if wide not in (2, 4, 8):
        return part.repeat(k, axis=1)
    ones = sum(1 << (8 * part.itemsize * i) for i in range(k))
    unsigned = np.dtype(f"u{wide}")
    bits = part.view(f"u{part.itemsize}").astype(unsigned)
    return (bits * unsigned.type(ones)).view(part.dtype)


@dataclass(frozen=True)
class _Source:
    """An open band file and where the grid's origin falls in it, in grid pixels."""

    dataset: rasterio.DatasetReader
    factor: int
    row_offset: int
    col_offset: int

    def read_rows(self, y0: int, y1: int, width: int) -> tuple[np.ndarray, int, int]:
        """The native pixels under grid rows ``[y0, y1)`` and ``width`` grid columns, and where
        grid pixel (y0, 0) falls in them, in grid pixels."""
        k = self.factor
        top, bottom = (self.row_offset + y0) // k, -(-(self.row_offset + y1) // k)
        left, right = self.col_offset // k, -(-(self.col_offset + width) // k)
        window = rasterio.windows.Window(left, top, right - left, bottom - top)
        return self.dataset.read(1, window=window), (self.row_offset + y0) % k, self.col_offset % k


def dn_to_reflectance(native: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """``native * scale + offset`` in float32: DN to reflectance."""
    scaled = native.astype(np.float32)
    scaled *= np.float32(scale)
    scaled += np.float32(offset)
    return scaled


def as_stored(native: np.ndarray, shift: int, dtype: np.dtype | str) -> np.ndarray:
    """The DN ``native + shift`` in ``dtype``: the patch store's reflectance integers straight
    from the COG's, with no float in between; ``native`` is reused when it already has ``dtype``
    (a strip owns its freshly decoded pixels).

    A DN that the shift would carry out of ``dtype`` is held at its end, as no DN of a real
    surface comes near it: in a scene before processing baseline 04.00 (shift +1000) that is
    65535, the code of a saturated pixel, which the SCL marks invalid and a crop fills."""
    dtype = np.dtype(dtype)
    stored = native.astype(dtype, copy=False)
    if not shift:
        return stored
    limits = np.iinfo(dtype)
    # In the stored dtype, clipped first so that nothing wraps: a fraction of the cost of a
    # pass through a wider integer.
    if shift > 0:
        np.minimum(stored, limits.max - shift, out=stored)
        return np.add(stored, dtype.type(shift), out=stored)
    np.maximum(stored, limits.min - shift, out=stored)
    return np.subtract(stored, dtype.type(-shift), out=stored)


def _native_part(native: np.ndarray, k: int, y: int, x: int, h: int, w: int) -> np.ndarray:
    """The native pixels under grid pixels ``[y, y + h) x [x, x + w)``."""
    return native[y // k : -(-(y + h) // k), x // k : -(-(x + w) // k)]


@dataclass(frozen=True)
class CogStrip:
    """Rows of one date at native resolution, ready to crop: every band already in the crops'
    dtype (float32 reflectance or the patch store's integers) and the valid mask, so that a
    crop only repeats pixels onto the grid. The per-pixel work is done once per strip, in the
    thread that decodes it, not once per crop in the thread that cuts."""

    bands: list[tuple[np.ndarray, int, int, int]]  # (native pixels, factor, dy, dx) per band
    valid: tuple[np.ndarray, int, int, int]  # the valid mask on the SCL's pixels
    dtype: np.dtype

    def crop(self, y: int, x: int, out: np.ndarray) -> np.ndarray:
        """Write the window whose upper-left grid pixel is (y, x) from the strip's first row
        into ``out`` (band, size, size) of the strip's dtype; return its valid mask."""
        if out.dtype != self.dtype:
            raise CogStackError(
                f"this strip was read for {self.dtype} crops, not {out.dtype}; "
                "read the rows again with that dtype"
            )
        size = out.shape[-1]
        for i, (native, k, dy, dx) in enumerate(self.bands):
            upsampled_into(out[i], native, k, dy + y, dx + x)
        native, k, dy, dx = self.valid
        return upsampled(native, k, dy + y, dx + x, size, size)


def _open_on_grid(path: str, grid: Grid, threads: int) -> _Source:
    """Open ``path`` and check that its pixels are whole blocks of the grid's pixels."""
    try:
        dataset = rasterio.open(path, NUM_THREADS=str(threads))
    except rasterio.RasterioIOError as err:
        raise CogStackError(f"cannot open {redact_urls(path)}: {redact_urls(err)}") from None
    t: Affine = dataset.transform
    factor = t.a / grid.transform.a
    rows = (grid.transform.f - t.f) / grid.transform.e
    cols = (grid.transform.c - t.c) / grid.transform.a
    reason = None
    if dataset.crs is None or dataset.crs.to_epsg() != grid.epsg:
        reason = f"its CRS is {dataset.crs}, the grid's EPSG:{grid.epsg}"
    elif t.b or t.d or abs(t.e + t.a) > 1e-9 or abs(factor - round(factor)) > 1e-6:
        reason = f"its pixel size {t.a} m is not a whole multiple of {grid.transform.a} m"
    elif abs(rows - round(rows)) > 1e-6 or abs(cols - round(cols)) > 1e-6:
        reason = "its pixel edges do not fall on the grid's pixel edges"
    elif (
        min(rows, cols) < 0
        or round(rows) + grid.height > dataset.height * round(factor)
        or round(cols) + grid.width > dataset.width * round(factor)
    ):
        reason = "it does not cover the whole grid"
    if reason:
        dataset.close()
        raise CogStackError(
            f"{redact_urls(path)} is not on the tile grid ({reason}); co-register the dates first "
            "(the `coregistered_stack` asset) and tile the stack instead"
        )
    return _Source(dataset, round(factor), round(rows), round(cols))


def finest_grid(paths: Iterable[str]) -> Grid:
    """The grid of the file with the smallest pixels among ``paths``."""
    grids = []
    for path in paths:
        with rasterio.open(path) as dataset:
            grids.append(
                Grid(dataset.crs.to_epsg(), dataset.transform, dataset.width, dataset.height)
            )
    return min(grids, key=lambda g: g.transform.a)


class CogStack:
    """Dates of one tile as COGs, read onto a 10 m grid a strip of rows at a time.

    Use it as a context manager: files open on entry and close on exit. ``grid`` defaults to the
    grid of the first scene's finest band (the 10 m grid of the tile).
    ``region`` and ``tile`` label the patches cut from it. Its crops can be the patch store's
    reflectance integers exactly (``encoding``), so tiling writes them with no float between.
    """

    encoding = STORED

    def __init__(
        self,
        scenes: Sequence[CogScene],
        bands: Sequence[str],
        grid: Grid | None = None,
        threads: int | None = None,
        invalid_scl: Sequence[int] = SCL_INVALID_DEFAULT,
        region: str = "",
        tile: str = "",
    ) -> None:
        if not scenes:
            raise CogStackError("no scenes: give at least one date")
        for scene in scenes:
            missing = [b for b in bands if b not in scene.bands]
            if missing:
                raise CogStackError(
                    f"the scene of {scene.date} has no COG for band(s) {missing}; "
                    f"it has {sorted(scene.bands)}"
                )
        self.region, self.tile = region, tile
        self.scenes = list(scenes)
        self.bands = list(bands)
        self.dates = [s.date for s in scenes]
        self.threads = threads or os.cpu_count() or 1
        self._valid_lut = np.ones(256, dtype=bool)
        self._valid_lut[list(invalid_scl)] = False
        self.grid = grid or finest_grid(scenes[0].bands[b] for b in self.bands)
        self._bands: list[list[_Source]] = []
        self._scl: list[_Source] = []
        self._env: rasterio.Env | None = None

    def __enter__(self) -> CogStack:
        try:
            for scene in self.scenes:
                self._bands.append(
                    [_open_on_grid(scene.bands[b], self.grid, self.threads) for b in self.bands]
                )
                self._scl.append(_open_on_grid(scene.scl, self.grid, self.threads))
        except BaseException:
            self.close()
            raise
        self._env = rasterio.Env(GDAL_CACHEMAX=self._block_cache_bytes())
        self._env.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every file this stack opened and restore GDAL's block cache size."""
        for source in [s for date in self._bands for s in date] + self._scl:
            source.dataset.close()
        self._bands, self._scl = [], []
        if self._env is not None:
            self._env.__exit__()
            self._env = None

    def _block_cache_bytes(self) -> int:
        """GDAL's block cache for this stack: one row of blocks of every open file (what the
        next strip reuses), plus a margin; bounded, so that memory does not grow with the
        whole scene's decoded size as the default cache (5% of RAM) lets it."""
        rows = 0
        for source in [s for date in self._bands for s in date] + self._scl:
            dataset = source.dataset
            itemsize = np.dtype(dataset.dtypes[0]).itemsize
            rows += dataset.block_shapes[0][0] * dataset.width * itemsize
        return int(rows * 1.25) + 64 * 2**20

    def _require_open(self) -> None:
        if not self._scl:
            raise CogStackError("the COG stack is closed; use it inside a `with` block")

    def read_rows(
        self, y0: int, y1: int, date: int, dtype: np.dtype | str = np.float32
    ) -> CogStrip:
        """Grid rows ``[y0, y1)`` of ``date``, every band decoded at its native resolution and
        made ready for crops of ``dtype``: float32 reflectance, or the patch store's
        reflectance integers (:data:`STORED`) in an integer dtype."""
        self._require_open()
        width, scene, dtype = self.grid.width, self.scenes[date], np.dtype(dtype)
        shift = round((scene.offset - STORED.offset) / STORED.scale)
        bands = []
        for source in self._bands[date]:
            native, dy, dx = source.read_rows(y0, y1, width)
            if dtype.kind == "f":
                native = dn_to_reflectance(native, L2A_SCALE, scene.offset)
            else:
                native = as_stored(native, shift, dtype)
            bands.append((native, source.factor, dy, dx))
        scl, dy, dx = self._scl[date].read_rows(y0, y1, width)
        return CogStrip(bands, (self._valid_lut[scl], self._scl[date].factor, dy, dx), dtype)

    def valid_fraction(self, size: int) -> np.ndarray:
        """Share of valid pixels of each ``size`` px window: (date, row, col), from the SCL."""
        self._require_open()
        rows, cols = self.grid.height // size, self.grid.width // size
        out = np.empty((len(self.dates), rows, cols))
        for t, source in enumerate(self._scl):
            scl, dy, dx = source.read_rows(0, rows * size, cols * size)
            k = source.factor
            if size % k or dy or dx:  # windows that split SCL pixels: count on the grid
                scl, k = upsampled(scl, k, dy, dx, rows * size, cols * size), 1
            # On whole SCL pixels each weighs k x k grid pixels alike: the same shares, from
            # k x k fewer pixels.
            out[t] = as_blocks(self._valid_lut[scl], size // k).mean(axis=(-2, -1))[:rows, :cols]
        return out
