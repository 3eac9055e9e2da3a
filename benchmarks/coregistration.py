"""Co-registration memory and throughput: a tile stack in dask blocks against one date in memory.

Test set (built in a temporary folder from the real 29RKH L2A tile in ``../shared/data``, whose
files are 10x downsampled but carry the tile's real bounds): the 12 L2A bands and the SCL at
their native resolution (10 m bands ``--size-px`` square from the tile's upper-left corner;
10980 is the whole tile), upsampled bilinearly (SCL: nearest) and written as COGs (DEFLATE,
predictor 2, 512 px blocks, uint16). Each of ``--dates`` dates reads those COGs through VRTs whose
georeference is offset by a planted sub-pixel shift, so that every date is decoded and resampled
in full and the measured shifts can be checked against the planted ones. The items are the real
Earth Search item with its hrefs pointed at the VRTs and one date each.

Each case runs in a fresh subprocess that co-registers the stack and writes it to zarr with
:func:`pipelines.stack_store.write_stack`; its peak resident set is the subprocess's
``ru_maxrss``, GDAL's block cache included: it is set to ``--gdal-cache-mb`` (GDAL's own default,
5% of RAM, lets the cache grow with the grid and hides what the blocks hold). "blocks" uses
the default 1024 px blocks; "in memory" sets the block to the whole grid, so each date's 12
bands are read and resampled as one array, as the pre-dask code did. Both run side by side on a
crop that the in-memory version handles, then the blocks alone on the full ``--size-px`` grid.
Prints a table and writes ``benchmarks/results/coregistration.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REAL_TILE = (
    Path(os.environ.get("MATTER_REAL_DATA", REPO.parent / "shared" / "data")) / "s2_l2a_cog_29RKH"
)
ITEM = "S2A_29RKH_20200219_0_L2A.json"
FIRST_DATE = date(2020, 2, 19)
# Planted (dy, dx) shifts in 10 m pixels, one per date after the first.
SHIFTS_PX = [(0.0, 0.0), (0.3, -0.4), (-0.6, 0.25), (0.45, 0.55)]
VRT_TYPES = {"uint16": "UInt16", "uint8": "Byte"}


def build_test_set(out: Path, size_px: int, dates: int) -> list[dict]:
    """Native-resolution COGs of the tile's upper-left ``size_px`` square, shifted VRTs per date,
    and one item per date pointing at them."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    from pipelines.bands import SCL, SPECTRAL_BANDS, asset_key

    template = json.loads((REAL_TILE / ITEM).read_text())
    extent_m = size_px * 10
    names = [b.name for b in SPECTRAL_BANDS] + [SCL.name]
    resolution = {b.name: b.resolution_m for b in (*SPECTRAL_BANDS, SCL)}
    for name in names:
        with rasterio.open(REAL_TILE / f"{name}.tif") as src:
            left, top = src.bounds.left, src.bounds.top
            window = from_bounds(left, top - extent_m, left + extent_m, top, src.transform)
            side = int(np.ceil(extent_m / resolution[name]))
            data = src.read(
                1,
                window=window,
                out_shape=(side, side),
                resampling=Resampling.nearest if name == SCL.name else Resampling.bilinear,
            )
            profile = {
                "driver": "COG",
                "width": side,
                "height": side,
                "count": 1,
                "dtype": data.dtype,
                "crs": src.crs,
                "transform": rasterio.Affine(extent_m / side, 0, left, 0, -extent_m / side, top),
                "nodata": 0,
                "compress": "deflate",
                "predictor": 2,
                "blocksize": 512,
            }
            with rasterio.open(out / f"{name}.tif", "w", **profile) as dst:
                dst.write(data, 1)
    items = []
    for d in range(dates):
        dy, dx = SHIFTS_PX[d % len(SHIFTS_PX)]
        day = (FIRST_DATE + timedelta(days=5 * d)).isoformat()
        folder = out / day
        folder.mkdir()
        item = json.loads(json.dumps(template))
        item["id"] = f"{template['id']}_{day}"
        item["properties"]["datetime"] = f"{day}T11:20:00Z"
        for name in names:
            with rasterio.open(out / f"{name}.tif") as src:
                t = src.transform
                # Content seen (dy, dx) pixels further down-right, as scipy.ndimage.shift does.
                geo = (t.c + dx * 10, t.a, 0.0, t.f - dy * 10, 0.0, t.e)
                vrt = folder / f"{name}.vrt"
                vrt.write_text(
                    f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
                    f"<SRS>{src.crs.to_wkt()}</SRS>"
                    f"<GeoTransform>{', '.join(repr(v) for v in geo)}</GeoTransform>"
                    f'<VRTRasterBand dataType="{VRT_TYPES[src.dtypes[0]]}"'
                    f' band="1"><NoDataValue>0</NoDataValue><SimpleSource>'
                    f"<SourceFilename>{out / f'{name}.tif'}</SourceFilename>"
                    f"<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
                )
            item["assets"][asset_key(item, name)]["href"] = vrt.as_uri()
        items.append(item)
    return items


def run_case(items_path: Path, size_px: int, chunk_px: int, out: Path) -> dict:
    """Co-register the square ``size_px`` grid at the upper-left of the tile, write it, measure."""
    import numpy as np
    from affine import Affine

    from pipelines.coregistration import coregister
    from pipelines.dates import stack_dates
    from pipelines.grid import Grid
    from pipelines.stack_store import open_stack, write_stack

    items = json.loads(items_path.read_text())
    left, top = 199980.0, 2800020.0  # the 29RKH tile's upper-left corner
    grid = Grid(32629, Affine(10.0, 0.0, left, 0.0, -10.0, top), width=size_px, height=size_px)
    start = time.perf_counter()
    stack = coregister(items, grid, region="29RKH", chunk_px=chunk_px)
    write_stack(stack, out)
    wall = time.perf_counter() - start
    written = open_stack(out)
    planted = np.array(SHIFTS_PX * len(items))[: len(items)]
    dates = stack_dates(written)
    reference = planted[dates.index(written.attrs["reference_date"])]
    error = np.abs(written.shift_px.values - (planted - reference)).max()
    return {
        "size_px": size_px,
        "dates": len(items),
        "chunk_px": chunk_px,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pixels_per_s": round(len(items) * size_px * size_px / wall),
        "max_shift_error_px": round(float(error), 4),
        "valid_fraction": [round(float(v), 4) for v in written.valid_fraction.values],
    }


def measure(items_path: Path, size_px: int, chunk_px: int, tmp: Path, cache_mb: int) -> dict:
    """One case in a fresh subprocess (its own peak RSS), its output zarr removed afterwards."""
    out = tmp / f"stack_{size_px}_{chunk_px}.zarr"
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--case",
            str(items_path),
            str(size_px),
            str(chunk_px),
            str(out),
        ],
        cwd=REPO,
        env={**os.environ, "GDAL_CACHEMAX": str(cache_mb)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"case {size_px} px, blocks {chunk_px}: {result.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size-px", type=int, default=4096, help="grid side in 10 m pixels (10980: the tile)"
    )
    parser.add_argument("--crop-px", type=int, default=2048, help="side of the side-by-side crop")
    parser.add_argument("--dates", type=int, default=3)
    parser.add_argument("--gdal-cache-mb", type=int, default=256)
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "coregistration.json", help="the JSON to write"
    )
    parser.add_argument("--case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        items_path, size_px, chunk_px, out = args.case
        print(json.dumps(run_case(Path(items_path), int(size_px), int(chunk_px), Path(out))))
        return
    if not REAL_TILE.exists():
        sys.exit(f"{REAL_TILE} is absent: set MATTER_REAL_DATA to the shared data folder")
    from matter_model.atomic_io import atomic_write_text
    from pipelines.coregistration import DEFAULT_CHUNK_PX

    with tempfile.TemporaryDirectory(prefix="coreg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        items = build_test_set(tmp, args.size_px, args.dates)
        build_s = time.perf_counter() - start
        items_path = tmp / "items.json"
        items_path.write_text(json.dumps(items))
        rows = {
            "in memory, crop": measure(
                items_path, args.crop_px, args.crop_px, tmp, args.gdal_cache_mb
            ),
            "blocks, crop": measure(
                items_path, args.crop_px, DEFAULT_CHUNK_PX, tmp, args.gdal_cache_mb
            ),
            "blocks, full grid": measure(
                items_path, args.size_px, DEFAULT_CHUNK_PX, tmp, args.gdal_cache_mb
            ),
        }
    crop_mem, crop_blocks = rows["in memory, crop"], rows["blocks, crop"]
    result = {
        "machine": f"{os.cpu_count()} CPU cores",
        "test_set": (
            f"29RKH L2A upsampled to native resolution, {args.size_px} px square, "
            f"{args.dates} dates with planted shifts {SHIFTS_PX[: args.dates]}"
        ),
        "build_s": round(build_s, 1),
        "gdal_cache_mb": args.gdal_cache_mb,
        "cases": rows,
        "crop_peak_ratio_in_memory_over_blocks": round(
            crop_mem["peak_rss_mb"] / crop_blocks["peak_rss_mb"], 2
        ),
        "crop_speed_ratio_blocks_over_in_memory": round(
            crop_blocks["pixels_per_s"] / crop_mem["pixels_per_s"], 2
        ),
        # What the in-memory version would hold for the full grid: every date's 12 bands and
        # mask as float32 plus the stacked copy, a lower bound on its peak.
        "full_grid_in_memory_lower_bound_mb": round(
            2 * args.dates * 13 * 4 * args.size_px**2 / 2**20
        ),
    }
    header = f"{'case':<20}{'px':>7}{'dates':>6}{'block':>7}{'wall s':>9}{'peak MB':>9}"
    print(header + f"{'Mpx/s':>8}{'shift err':>10}")
    for name, row in rows.items():
        print(
            f"{name:<20}{row['size_px']:>7}{row['dates']:>6}{row['chunk_px']:>7}"
            f"{row['wall_s']:>9.1f}{row['peak_rss_mb']:>9.0f}"
            f"{row['pixels_per_s'] / 1e6:>8.2f}{row['max_shift_error_px']:>10.3f}"
        )
    print(
        f"in memory / blocks peak on the crop: {result['crop_peak_ratio_in_memory_over_blocks']}x; "
        f"the full grid in memory would need over {result['full_grid_in_memory_lower_bound_mb']} MB"
    )
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
