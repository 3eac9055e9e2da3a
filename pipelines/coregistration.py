"""Co-registration: the dates of a region onto one 10 m UTM grid, with a valid-pixel mask.

Contract of the output (a zarr v3 store written by :func:`~pipelines.stack_store.write_stack`,
read back by :func:`~pipelines.stack_store.open_stack`), an ``xarray.Dataset`` with

- ``reflectance`` (time, band, y, x) float32 surface reflectance, NaN where no data;
- ``valid`` (time, y, x) bool: data present and the SCL class not in ``invalid_scl``;
- ``shift_px`` (time, axis) float32: the residual (dy, dx) shift measured against the reference
  date before it was corrected; ``valid_fraction`` (time); ``item_ids`` (time);
- attrs ``crs`` ("EPSG:xxxxx"), ``transform`` (6 affine coefficients), ``region``, ``tiles``
  (the items' MGRS tiles, comma-separated), ``reference_date``.

:func:`coregister` returns it dask-backed, in blocks of ``chunk_px`` pixels: each block is read
through windows of a ``WarpedVRT`` onto the target grid (:mod:`pipelines.scene_reader`, or
stackstac's lazy stack: :mod:`pipelines.stackstac_reader`, with ``reader="stackstac"``), the
shift is measured on a bounded sample and applied per block, each block read again with a margin
of the shift, so that no block waits on its neighbours (:mod:`pipelines.shift`), and
:func:`~pipelines.stack_store.write_stack` writes the blocks into zarr one row of blocks at a
time. A full 10980 x 10980 tile of several dates thus runs in memory bounded by a row of blocks,
on the current dask scheduler (threads, or a ``distributed.Client`` when one is active).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import dask
import dask.array as da
import numpy as np
import xarray as xr

from pipelines import scene_reader, stackstac_reader
from pipelines.bands import SCL_INVALID_DEFAULT, SPECTRAL_BANDS, band
from pipelines.grid import CoregistrationError, Grid
from pipelines.shift import estimate_shift, sample_slices, shifted_mosaic
from pipelines.stac.items import scenes_by_date
from pipelines.stac.search import item_mgrs_tile

# A block of 12 bands + the valid mask at 1024 px is 54 MB of float32: a few per thread stay small.
DEFAULT_CHUNK_PX = 1024
# The shift is measured on at most this square of the shift band: reading it and its FFTs grow
# with its area, and a 10 km square holds texture enough.
DEFAULT_SAMPLE_PX = 1024
# A date sharing less than this share of the grid's pixels with the reference is not corrected.
MIN_SHIFT_OVERLAP = 0.2


@dataclass(frozen=True)
class Reader:
    """How scenes are read onto the grid: a date's lazy mosaic (band + 1, y, x) float32 (the
    valid mask last) and its lazy SCL-valid mask (y, x) bool, both in ``chunk_px`` blocks, and
    the mosaic of one grid window (``mosaic_block``), which lets a shifted date be corrected
    block by block from reads with a margin."""

    date_mosaic: Callable[..., da.Array]
    scl_valid: Callable[..., da.Array]
    mosaic_block: Callable[..., np.ndarray]


# The scene readers by name: hand-written windows of a WarpedVRT, or stackstac's lazy stack.
READERS: dict[str, Reader] = {
    "warpedvrt": Reader(
        scene_reader.date_mosaic, scene_reader.scl_valid, scene_reader.mosaic_block
    ),
    "stackstac": Reader(
        stackstac_reader.date_mosaic, stackstac_reader.scl_valid, stackstac_reader.mosaic_block
    ),
}
DEFAULT_READER = "warpedvrt"


def _reader_name(name: str) -> str:
    """``name`` if it is a known reader, else an error that lists them."""
    if name not in READERS:
        raise CoregistrationError(f"unknown reader {name!r}; known readers: {', '.join(READERS)}")
    return name


@dataclass(frozen=True)
class Overlaps:
    """Pixels whose SCL is valid on two dates: per block, as a share of the grid, and the
    reference date (the one with most valid pixels)."""

    pair_counts: np.ndarray  # (block row, block col, date, date)
    share: np.ndarray  # (date, date)
    reference: int


def coregister(
    items: Sequence[dict],
    grid: Grid,
    region: str,
    bands: Sequence[str] = tuple(b.name for b in SPECTRAL_BANDS),
    invalid_scl: Sequence[int] = SCL_INVALID_DEFAULT,
    shift_band: str = "B08",
    href_rewrites: Sequence[tuple[str, str]] = (),
    chunk_px: int = DEFAULT_CHUNK_PX,
    sample_px: int = DEFAULT_SAMPLE_PX,
    reader: str = DEFAULT_READER,
) -> xr.Dataset:
    """Bring a region's items onto ``grid``: one mosaic per date, shifts measured and corrected.

    The result is dask-backed in ``chunk_px`` blocks (``reflectance`` and ``valid`` are computed
    when written or read); the shifts are measured here, on the current dask scheduler. The
    reference date is the one with most valid SCL pixels; a date sharing under a fifth of the
    grid's pixels with it is left uncorrected (shift 0). ``reader`` names the entry of
    :data:`READERS` that reads the scenes onto the grid.
    """
    _check_request(items, region, bands, shift_band)
    by_date = scenes_by_date(items)
    read = READERS[_reader_name(reader)]
    dates = list(by_date.values())
    masks = [read.scl_valid(s, grid, invalid_scl, href_rewrites, chunk_px) for s in dates]
    overlaps = measure_overlaps(masks, grid)
    mosaics = [
        read.date_mosaic(s, grid, bands, invalid_scl, href_rewrites, chunk_px) for s in dates
    ]
    planes = [list(bands).index(shift_band), len(bands)]
    shifts = measure_shifts(mosaics, planes, overlaps, grid, chunk_px, sample_px)
    for t in np.flatnonzero(_measured(overlaps)):
        window = partial(read.mosaic_block, dates[t], grid, bands, invalid_scl, href_rewrites)
        mosaics[t] = shifted_mosaic(window, len(bands) + 1, grid, chunk_px, shifts[t])
    attrs = {
        "crs": f"EPSG:{grid.epsg}",
        "transform": list(grid.transform)[:6],
        "region": region,
        "tiles": ",".join(sorted({t for it in items if (t := item_mgrs_tile(it))})),
        "reference_date": list(by_date)[overlaps.reference],
    }
    return _stack_dataset(mosaics, shifts, by_date, grid, bands, attrs)


def _check_request(
    items: Sequence[dict], region: str, bands: Sequence[str], shift_band: str
) -> None:
    """Refuse an empty region, an unknown band, or a shift band that is not read."""
    if not items:
        raise CoregistrationError(f"no items to co-register for region {region}")
    for name in bands:
        band(name)
    if shift_band not in bands:
        raise CoregistrationError(
            f"shift_band {shift_band} is not among the bands read ({list(bands)}); pick one of them"
        )


def _pair_counts(masks: np.ndarray) -> np.ndarray:
    """(date, date) counts of pixels valid on both dates, from one block of (date, y, x) masks."""
    flat = masks.reshape(len(masks), -1).astype(np.float64)
    return flat @ flat.T


def measure_overlaps(masks: Sequence[da.Array], grid: Grid) -> Overlaps:
    """The :class:`Overlaps` of the dates' lazy SCL-valid masks (y, x), block by block (the
    masks' own blocks) on the current dask scheduler."""
    blocks = da.stack(masks).rechunk({0: -1}).to_delayed()[0]
    counts = dask.delayed(_pair_counts)
    pair_counts = np.array(dask.compute([[counts(b) for b in row] for row in blocks])[0])
    share = pair_counts.sum(axis=(0, 1)) / (grid.height * grid.width)
    return Overlaps(pair_counts, share, int(np.argmax(np.diag(share))))


def _measured(overlaps: Overlaps) -> np.ndarray:
    """Which dates get a shift measured: all but the reference and those sharing too little of
    the grid with it to trust a measurement (left uncorrected, shift 0)."""
    measured = overlaps.share[:, overlaps.reference] >= MIN_SHIFT_OVERLAP
    measured[overlaps.reference] = False
    return measured


def measure_shifts(
    mosaics: Sequence[da.Array],
    planes: Sequence[int],
    overlaps: Overlaps,
    grid: Grid,
    chunk_px: int,
    sample_px: int,
) -> np.ndarray:
    """(date, axis) float32 shift of each date against the reference, measured on the shift band
    and valid mask (``planes``) of its sample; 0 for the dates not measured."""
    shifts = np.zeros((len(mosaics), 2), dtype=np.float32)
    references: dict[tuple, np.ndarray] = {}  # the reference's sample, read once per place
    reference = overlaps.reference
    for t in np.flatnonzero(_measured(overlaps)):
        rows, cols = sample_slices(overlaps.pair_counts, t, reference, grid, chunk_px, sample_px)
        place = (rows.start, rows.stop, cols.start, cols.stop)
        if place not in references:
            references[place] = mosaics[reference][planes, rows, cols].compute()
        ref, mov = references[place], mosaics[t][planes, rows, cols].compute()
        shifts[t] = estimate_shift(ref[0], mov[0], (ref[1] > 0.5) & (mov[1] > 0.5))
    return shifts


def _stack_dataset(
    mosaics: Sequence[da.Array],
    shifts: np.ndarray,
    by_date: dict[str, list[dict]],
    grid: Grid,
    bands: Sequence[str],
    attrs: dict,
) -> xr.Dataset:
    """The dates' mosaics as one stack with the contract of this module."""
    dates = list(by_date)
    cube = da.stack(mosaics)
    valid = cube[:, -1] > 0.5
    y, x = grid.coords
    return xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), cube[:, :-1]),
            "valid": (("time", "y", "x"), valid),
            "shift_px": (("time", "axis"), shifts),
            "valid_fraction": (("time",), valid.mean(axis=(1, 2)).astype(np.float32)),
            "item_ids": (
                ("time",),
                np.array([",".join(s["id"] for s in by_date[d]) for d in dates]),
            ),
        },
        coords={
            "time": np.array(dates, dtype="datetime64[ns]"),
            "band": list(bands),
            "y": y,
            "x": x,
            "axis": ["y", "x"],
        },
        attrs=attrs,
    )
