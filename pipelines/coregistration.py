"""Co-registration: the dates of a region onto one 10 m UTM grid, with a valid-pixel mask.

Contract of the output (a zarr v3 store written by :func:`write_stack`, read back by
:func:`open_stack`), an ``xarray.Dataset`` with

- ``reflectance`` (time, band, y, x) float32 surface reflectance, NaN where no data;
- ``valid`` (time, y, x) bool: data present and the SCL class not in ``invalid_scl``;
- ``shift_px`` (time, axis) float32: the residual (dy, dx) shift measured against the reference
  date before it was corrected; ``valid_fraction`` (time); ``item_ids`` (time);
- attrs ``crs`` ("EPSG:xxxxx"), ``transform`` (6 affine coefficients), ``region``, ``tiles``
  (the items' MGRS tiles, comma-separated), ``reference_date``.

:func:`coregister` returns it dask-backed, in blocks of ``chunk_px`` pixels: each block is read
through windows of a ``WarpedVRT`` onto the target grid, the shift is measured on a bounded sample
and applied per block with an overlap, and :func:`write_stack` streams the blocks into zarr. A
full 10980 x 10980 tile of several dates thus runs in memory bounded by a few blocks, on the
current dask scheduler (threads, or a ``distributed.Client`` when one is active).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import dask
import dask.array as da
import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from scipy import ndimage, optimize
from zarr.errors import UnstableSpecificationWarning

from matter_model.atomic_io import atomic_directory
from pipelines.bands import SCL, SCL_INVALID_DEFAULT, SPECTRAL_BANDS, asset_key, band
from pipelines.stac.search import item_mgrs_tile
from pipelines.stac.signing import HrefSigner, refresh_signature, unsigned

BASELINE_WITH_OFFSET = (4, 0)  # from processing baseline 04.00 on, DN carry a +1000 offset
BOA_OFFSET = -0.1
# A block of 12 bands + the valid mask at 1024 px is 54 MB of float32: a few per thread stay small.
DEFAULT_CHUNK_PX = 1024
# The shift is measured on at most this square of the shift band: the optimiser's cost grows with
# its area (about 20 s per date at 1024 px on one core), and a 10 km square holds texture enough.
DEFAULT_SAMPLE_PX = 1024


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


def item_epsg(item: dict) -> int:
    """The item's EPSG code from ``proj:epsg`` or ``proj:code`` (pystac 1.15 writes the latter)."""
    props = item["properties"]
    if props.get("proj:epsg"):
        return int(props["proj:epsg"])
    code = props.get("proj:code", "")
    if code.upper().startswith("EPSG:"):
        return int(code.split(":")[1])
    raise CoregistrationError(f"item {item['id']} carries neither proj:epsg nor an EPSG proj:code")


def resolve_href(
    href: str,
    href_rewrites: Sequence[tuple[str, str]] = (),
    sign: HrefSigner = refresh_signature,
) -> str:
    """Apply the first matching (prefix, replacement) rewrite, then turn ``file://`` into a path.

    Rewrites map cloud hrefs to a local mirror or cache (``https://bucket/...`` -> ``/mirror/...``),
    dropping a SAS token on the way. An href still in the cloud goes through ``sign`` just before
    the read: by default an expiring Planetary Computer signature is renewed.
    """
    for prefix, replacement in href_rewrites:
        if href.startswith(prefix):
            href = replacement + unsigned(href)[len(prefix) :]
            break
    if href.startswith("file://"):
        return unquote(urlparse(href).path)
    return sign(href)


def reflectance_offset(item: dict) -> float:
    """The BOA offset to add after scaling, from ``s2:processing_baseline`` (not the flag).

    ``earthsearch:boa_offset_applied`` is wrong on some Earth Search items; the baseline is not.
    """
    baseline = item["properties"].get("s2:processing_baseline")
    if baseline is None:
        raise CoregistrationError(
            f"item {item['id']} has no s2:processing_baseline, so its reflectance offset is "
            "unknown; add the property or use a provider that records it"
        )
    major, minor = (int(part) for part in str(baseline).split(".")[:2])
    return BOA_OFFSET if (major, minor) >= BASELINE_WITH_OFFSET else 0.0


def read_asset(
    path: str, grid: Grid, resampling: Resampling, window: Window | None = None
) -> tuple[np.ndarray, float | None]:
    """One asset resampled onto ``grid`` by its own georeference (so downsampled mirrors work).

    ``window`` (in grid pixels) reads only that part of the grid: the warp is computed for the
    window alone, so blocks of a tile can be read independently and in parallel.
    """
    try:
        with (
            rasterio.open(path) as src,
            WarpedVRT(
                src,
                crs=f"EPSG:{grid.epsg}",
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=resampling,
                src_nodata=src.nodata if src.nodata is not None else 0,
                nodata=0,
            ) as vrt,
        ):
            return vrt.read(1, window=window), src.nodata
    except rasterio.RasterioIOError as err:
        raise CoregistrationError(
            f"cannot read {path}: {err}. Check the asset href, or map it to a local mirror with "
            "`href_rewrites` in the config."
        ) from None


def asset_path(item: dict, name: str, href_rewrites: Sequence[tuple[str, str]] = ()) -> str:
    """The href of band ``name``'s asset, through :func:`resolve_href`."""
    return resolve_href(item["assets"][asset_key(item, name)]["href"], href_rewrites)


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
        raster = (item["assets"][asset_key(item, name)].get("raster:bands") or [{}])[0]
        scale = float(raster.get("scale", 1e-4))
        dn, _ = read_asset(asset_path(item, name, href_rewrites), grid, Resampling.bilinear, window)
        present = dn > 0
        out[i][present] = dn[present].astype(np.float32) * scale + offset
    scl, _ = read_asset(asset_path(item, SCL.name, href_rewrites), grid, Resampling.nearest, window)
    return out, scl.astype(np.uint8)


def scenes_by_date(items: Sequence[dict]) -> dict[str, list[dict]]:
    """The items per acquisition date (sorted), the clearest scene (lowest cloud cover) first."""
    by_date: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_date[item["properties"]["datetime"][:10]].append(item)
    return {
        date: sorted(by_date[date], key=lambda it: it["properties"].get("eo:cloud_cover", 100))
        for date in sorted(by_date)
    }


def mosaic_block(
    scenes: Sequence[dict],
    grid: Grid,
    bands: Sequence[str],
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    window: Window | None = None,
) -> np.ndarray:
    """One date's scenes mosaicked over ``window``: (band + 1, y, x) float32.

    The planes are the reflectance bands, then the valid mask (1 where data is present in every
    band and the SCL class is not in ``invalid_scl``, else 0), so that one block carries
    everything the shift correction resamples. The first scene wins where scenes overlap.
    """
    reflectance, scl = read_item(scenes[0], grid, bands, href_rewrites, window)
    for scene in scenes[1:]:
        more, more_scl = read_item(scene, grid, bands, href_rewrites, window)
        empty = np.isnan(reflectance).all(axis=0)
        reflectance[:, empty] = more[:, empty]
        scl[empty] = more_scl[empty]
    valid = ~np.isin(scl, list(invalid_scl)) & np.isfinite(reflectance).all(axis=0)
    return np.concatenate([reflectance, valid[None].astype(np.float32)])


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
    scl, _ = read_asset(
        asset_path(scenes[0], SCL.name, href_rewrites), grid, Resampling.nearest, window
    )
    for scene in scenes[1:]:
        more, _ = read_asset(
            asset_path(scene, SCL.name, href_rewrites), grid, Resampling.nearest, window
        )
        scl = np.where(scl == 0, more, scl)
    return ~np.isin(scl, list(invalid_scl))


def _pair_counts(
    dates: Sequence[Sequence[dict]],
    grid: Grid,
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    window: Window,
) -> np.ndarray:
    """(date, date) counts of pixels whose SCL is valid on both dates, within ``window``."""
    masks = np.stack(
        [scl_valid_block(s, grid, invalid_scl, href_rewrites, window) for s in dates]
    ).reshape(len(dates), -1)
    masks = masks.astype(np.float64)
    return masks @ masks.T


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


def date_mosaic(
    scenes: Sequence[dict],
    grid: Grid,
    bands: Sequence[str],
    invalid_scl: Sequence[int],
    href_rewrites: Sequence[tuple[str, str]],
    chunk_px: int,
) -> da.Array:
    """One date's mosaic as a lazy dask array (band + 1, y, x), one task per block."""
    read = dask.delayed(mosaic_block)
    return da.block(
        [
            [
                da.from_delayed(
                    read(scenes, grid, bands, invalid_scl, href_rewrites, window),
                    shape=(len(bands) + 1, window.height, window.width),
                    dtype=np.float32,
                )
                for window in row
            ]
            for row in block_windows(grid, chunk_px)
        ]
    )


def _sample_slices(
    pair_counts: np.ndarray, t: int, reference: int, grid: Grid, chunk_px: int, sample_px: int
) -> tuple[slice, slice]:
    """Where to measure date ``t``'s shift: the whole grid when it fits in ``sample_px``, else
    the square of blocks (at most ``sample_px`` wide, or the corner of one block larger than
    that) with most pixels valid on both dates."""
    if grid.height <= sample_px and grid.width <= sample_px:
        return slice(None), slice(None)
    k = max(1, sample_px // chunk_px)
    counts = pair_counts[:, :, t, reference]
    ky, kx = min(k, counts.shape[0]), min(k, counts.shape[1])
    sums = np.lib.stride_tricks.sliding_window_view(counts, (ky, kx)).sum(axis=(2, 3))
    by, bx = np.unravel_index(np.argmax(sums), sums.shape)
    return (
        slice(by * chunk_px, by * chunk_px + min(ky * chunk_px, sample_px)),
        slice(bx * chunk_px, bx * chunk_px + min(kx * chunk_px, sample_px)),
    )


def estimate_shift(reference: np.ndarray, moving: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Sub-pixel (dy, dx) such that ``moving`` ~ ``reference`` shifted by (dy, dx).

    The integer part comes from the phase-correlation peak (invalid pixels set to the valid mean,
    a Hann window against border effects); the sub-pixel part from maximising the correlation of
    the standardised images over pixels valid in both, with cubic-spline resampling. Standardising
    makes the estimate blind to gain and offset between dates.
    """

    def standardised(image: np.ndarray) -> np.ndarray:
        values = image[valid]
        return np.where(valid, (image - values.mean()) / max(values.std(), 1e-9), 0.0)

    ref, mov = standardised(reference), standardised(moving)
    window = np.outer(np.hanning(ref.shape[0]), np.hanning(ref.shape[1]))
    cross = np.fft.fft2(mov * window) * np.conj(np.fft.fft2(ref * window))
    surface = np.fft.ifft2(cross / (np.abs(cross) + 1e-12)).real
    peak = np.array(np.unravel_index(np.argmax(surface), surface.shape))
    size = np.array(surface.shape)
    integer = np.where(peak > size // 2, peak - size, peak).astype(np.float64)

    margin = int(np.ceil(np.abs(integer).max())) + 3
    inner = (slice(margin, -margin), slice(margin, -margin))
    # Compare only pixels away from any invalid area: both images are zero there, and a mask
    # edge that stays put in both would pull the estimate towards no shift at all.
    inner_valid = ndimage.binary_erosion(valid, iterations=margin, border_value=1)[inner]

    def misfit(shift: np.ndarray) -> float:
        back = ndimage.shift(mov, -shift, order=3, mode="nearest")[inner]
        return -float(np.mean(back[inner_valid] * ref[inner][inner_valid]))

    result = optimize.minimize(
        misfit,
        integer,
        method="Powell",
        bounds=[(v - 1.5, v + 1.5) for v in integer],
        options={"xtol": 1e-3, "ftol": 1e-7},
    )
    return np.asarray(result.x)


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
) -> xr.Dataset:
    """Bring a region's items onto ``grid``: one mosaic per date, shifts measured and corrected.

    The result is dask-backed in ``chunk_px`` blocks (``reflectance`` and ``valid`` are computed
    when written or read); the shifts are measured here, on the current dask scheduler. The
    reference date is the one with most valid SCL pixels; a date sharing under a fifth of the
    grid's pixels with it is left uncorrected (shift 0).
    """
    if not items:
        raise CoregistrationError(f"no items to co-register for region {region}")
    for name in bands:
        band(name)
    if shift_band not in bands:
        raise CoregistrationError(
            f"shift_band {shift_band} is not among the bands read ({list(bands)}); pick one of them"
        )
    by_date = scenes_by_date(items)
    dates = list(by_date)
    windows = block_windows(grid, chunk_px)
    counts = dask.delayed(_pair_counts)
    pair_counts = np.array(
        dask.compute(
            [
                [counts(list(by_date.values()), grid, invalid_scl, href_rewrites, w) for w in row]
                for row in windows
            ]
        )[0]
    )
    overlap = pair_counts.sum(axis=(0, 1)) / (grid.height * grid.width)
    reference = int(np.argmax(np.diag(overlap)))
    mosaics = [
        date_mosaic(by_date[d], grid, bands, invalid_scl, href_rewrites, chunk_px) for d in dates
    ]
    planes = [list(bands).index(shift_band), len(bands)]
    shifts = np.zeros((len(dates), 2), dtype=np.float32)
    references: dict[tuple, np.ndarray] = {}  # the reference's sample, read once per place
    for t in range(len(dates)):
        if t == reference or overlap[t, reference] < 0.2:
            continue  # too little overlap to trust a measurement; left uncorrected, shift 0
        rows, cols = _sample_slices(pair_counts, t, reference, grid, chunk_px, sample_px)
        place = (rows.start, rows.stop, cols.start, cols.stop)
        if place not in references:
            references[place] = mosaics[reference][planes, rows, cols].compute()
        ref, mov = references[place], mosaics[t][planes, rows, cols].compute()
        shifts[t] = estimate_shift(ref[0], mov[0], (ref[1] > 0.5) & (mov[1] > 0.5))
        depth = int(np.ceil(np.abs(shifts[t]).max())) + 1
        mosaics[t] = mosaics[t].map_overlap(
            _apply_shift,
            depth={0: 0, 1: depth, 2: depth},
            boundary="none",
            dtype=np.float32,
            shift=-shifts[t],
        )
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
        attrs={
            "crs": f"EPSG:{grid.epsg}",
            "transform": list(grid.transform)[:6],
            "region": region,
            "tiles": ",".join(sorted({t for it in items if (t := item_mgrs_tile(it))})),
            "reference_date": dates[reference],
        },
    )


def _apply_shift(block: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Resample a (band + 1, y, x) mosaic block by ``shift`` (bilinear); reflectance pixels
    touched by invalid ones become invalid and NaN. Run per block with an overlap of at least
    the shift plus one pixel, it gives what resampling the whole date would."""
    filled = np.nan_to_num(block[:-1], nan=0.0)
    moved = np.stack([ndimage.shift(b, shift, order=1, mode="nearest") for b in filled])
    moved_valid = ndimage.shift(block[-1], shift, order=1, mode="constant", cval=0)
    still_valid = moved_valid > 0.999
    moved[:, ~still_valid] = np.nan
    return np.concatenate([moved, still_valid[None]]).astype(np.float32)


def stack_grid(stack: xr.Dataset) -> Grid:
    """The :class:`Grid` a stack was written on."""
    return Grid(
        epsg=int(stack.attrs["crs"].split(":")[1]),
        transform=Affine(*stack.attrs["transform"]),
        width=stack.sizes["x"],
        height=stack.sizes["y"],
    )


def write_stack(stack: xr.Dataset, path: str | Path) -> Path:
    """Write a stack to zarr v3 atomically (a rerun replaces it whole).

    A dask-backed stack is streamed block by block (one zarr chunk per block and band), so the
    write holds no more than the blocks in flight.
    """
    path = Path(path)
    reflectance = stack["reflectance"]
    if reflectance.chunks:
        spatial = (reflectance.chunks[2][0], reflectance.chunks[3][0])
    else:
        spatial = (min(512, stack.sizes["y"]), min(512, stack.sizes["x"]))
    # The band and date labels are short strings, which zarr v3 stores with a dtype it still
    # calls unstable; zarr-python reads them back, and nothing else reads these stacks.
    with atomic_directory(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        stack.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={"reflectance": {"chunks": (1, 1, *spatial)}},
        )
    return path


def open_stack(path: str | Path) -> xr.Dataset:
    """Open a stack written by :func:`write_stack` (lazily, dask-backed)."""
    if not Path(path, "zarr.json").exists():
        raise CoregistrationError(
            f"no co-registered stack at {path}; materialise `coregistered_stack` for this "
            "partition first"
        )
    return xr.open_zarr(path, consolidated=False, zarr_format=3)
