"""Co-registration: the dates of a region onto one 10 m UTM grid, with a valid-pixel mask.

Contract of the output (a zarr v3 store written by :func:`write_stack`, read back by
:func:`open_stack`), an ``xarray.Dataset`` with

- ``reflectance`` (time, band, y, x) float32 surface reflectance, NaN where no data;
- ``valid`` (time, y, x) bool: data present and the SCL class not in ``invalid_scl``;
- ``shift_px`` (time, axis) float32: the residual (dy, dx) shift measured against the reference
  date before it was corrected; ``valid_fraction`` (time); ``item_ids`` (time);
- attrs ``crs`` ("EPSG:xxxxx"), ``transform`` (6 affine coefficients), ``region``,
  ``reference_date``.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from scipy import ndimage, optimize
from zarr.errors import UnstableSpecificationWarning

from matter_model.atomic_io import atomic_directory
from pipelines.bands import SCL, SCL_INVALID_DEFAULT, SPECTRAL_BANDS, asset_key, band
from pipelines.stac.signing import HrefSigner, refresh_signature, unsigned

BASELINE_WITH_OFFSET = (4, 0)  # from processing baseline 04.00 on, DN carry a +1000 offset
BOA_OFFSET = -0.1


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


def read_asset(path: str, grid: Grid, resampling: Resampling) -> tuple[np.ndarray, float | None]:
    """One asset resampled onto ``grid`` by its own georeference (so downsampled mirrors work)."""
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
            return vrt.read(1), src.nodata
    except rasterio.RasterioIOError as err:
        raise CoregistrationError(
            f"cannot read {path}: {err}. Check the asset href, or map it to a local mirror with "
            "`href_rewrites` in the config."
        ) from None


def read_item(
    item: dict,
    grid: Grid,
    bands: Sequence[str],
    href_rewrites: Sequence[tuple[str, str]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance (band, y, x) float32 with NaN for no data, and the SCL (y, x) uint8, on grid.

    Reflectance bands are resampled bilinearly, the SCL by nearest neighbour.
    """
    offset = reflectance_offset(item)
    out = np.full((len(bands), grid.height, grid.width), np.nan, dtype=np.float32)
    for i, name in enumerate(bands):
        asset = item["assets"][asset_key(item, name)]
        raster = (asset.get("raster:bands") or [{}])[0]
        scale = float(raster.get("scale", 1e-4))
        dn, _ = read_asset(resolve_href(asset["href"], href_rewrites), grid, Resampling.bilinear)
        present = dn > 0
        out[i][present] = dn[present].astype(np.float32) * scale + offset
    scl_asset = item["assets"][asset_key(item, SCL.name)]
    scl, _ = read_asset(resolve_href(scl_asset["href"], href_rewrites), grid, Resampling.nearest)
    return out, scl.astype(np.uint8)


def mosaic_by_date(
    items: Sequence[dict],
    grid: Grid,
    bands: Sequence[str],
    href_rewrites: Sequence[tuple[str, str]] = (),
) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Per acquisition date: reflectance and SCL mosaicked over that date's scenes.

    The clearest scene (lowest ``eo:cloud_cover``) wins where scenes overlap.
    """
    by_date: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_date[item["properties"]["datetime"][:10]].append(item)
    mosaics = {}
    for date in sorted(by_date):
        scenes = sorted(by_date[date], key=lambda it: it["properties"].get("eo:cloud_cover", 100))
        reflectance, scl = read_item(scenes[0], grid, bands, href_rewrites)
        for scene in scenes[1:]:
            more, more_scl = read_item(scene, grid, bands, href_rewrites)
            empty = np.isnan(reflectance).all(axis=0)
            reflectance[:, empty] = more[:, empty]
            scl[empty] = more_scl[empty]
        mosaics[date] = (reflectance, scl, [s["id"] for s in scenes])
    return mosaics


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
) -> xr.Dataset:
    """Bring a region's items onto ``grid``: one mosaic per date, shifts measured and corrected."""
    if not items:
        raise CoregistrationError(f"no items to co-register for region {region}")
    for name in bands:
        band(name)
    mosaics = mosaic_by_date(items, grid, bands, href_rewrites)
    dates = list(mosaics)
    reflectance = np.stack([mosaics[d][0] for d in dates])
    valid = np.stack(
        [
            ~np.isin(mosaics[d][1], list(invalid_scl)) & np.isfinite(mosaics[d][0]).all(axis=0)
            for d in dates
        ]
    )
    valid_fraction = valid.mean(axis=(1, 2))
    reference = int(np.argmax(valid_fraction))
    shift_index = list(bands).index(shift_band)
    shifts = np.zeros((len(dates), 2), dtype=np.float32)
    for t in range(len(dates)):
        both = valid[t] & valid[reference]
        if t == reference or both.mean() < 0.2:
            continue  # too little overlap to trust a measurement; left uncorrected, shift 0
        shifts[t] = estimate_shift(
            reflectance[reference, shift_index], reflectance[t, shift_index], both
        )
        reflectance[t], valid[t] = _apply_shift(reflectance[t], valid[t], -shifts[t])
    valid_fraction = valid.mean(axis=(1, 2))
    y, x = grid.coords
    return xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), reflectance),
            "valid": (("time", "y", "x"), valid),
            "shift_px": (("time", "axis"), shifts),
            "valid_fraction": (("time",), valid_fraction.astype(np.float32)),
            "item_ids": (("time",), np.array([",".join(mosaics[d][2]) for d in dates])),
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
            "tiles": ",".join(sorted({it["properties"].get("grid:code", "") for it in items})),
            "reference_date": dates[reference],
        },
    )


def _apply_shift(
    reflectance: np.ndarray, valid: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Resample one date by ``shift`` (bilinear); pixels touched by invalid ones become invalid."""
    filled = np.nan_to_num(reflectance, nan=0.0)
    moved = np.stack([ndimage.shift(b, shift, order=1, mode="nearest") for b in filled])
    moved_valid = ndimage.shift(valid.astype(np.float32), shift, order=1, mode="constant", cval=0)
    still_valid = moved_valid > 0.999
    moved[:, ~still_valid] = np.nan
    return moved.astype(np.float32), still_valid


def stack_grid(stack: xr.Dataset) -> Grid:
    """The :class:`Grid` a stack was written on."""
    return Grid(
        epsg=int(stack.attrs["crs"].split(":")[1]),
        transform=Affine(*stack.attrs["transform"]),
        width=stack.sizes["x"],
        height=stack.sizes["y"],
    )


def write_stack(stack: xr.Dataset, path: str | Path) -> Path:
    """Write a stack to zarr v3 atomically (a rerun replaces it whole)."""
    path = Path(path)
    encoding = {"reflectance": {"chunks": (1, 1, 512, 512)}}
    # The band and date labels are short strings, which zarr v3 stores with a dtype it still
    # calls unstable; zarr-python reads them back, and nothing else reads these stacks.
    with atomic_directory(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        stack.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={
                name: {
                    "chunks": tuple(
                        min(c, s) for c, s in zip(spec["chunks"], stack[name].shape, strict=True)
                    )
                }
                for name, spec in encoding.items()
            },
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
