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
:func:`pipelines.stack_store.write_stack`; its peak resident set is the subprocess's own
(``process_usage.peak_rss_mb``), GDAL's block cache included: it is set to
``--gdal-cache-mb`` (GDAL's own default, 5% of RAM, lets the cache grow with the grid and hides
what the blocks hold). "blocks" uses the default 1024 px blocks; "in memory" sets the block to
the whole grid, so each date's 12 bands are read and resampled as one array, as the pre-dask
code did. Both run side by side on a crop that the in-memory version handles, then the blocks
alone on the full ``--size-px`` grid.
After each blocks case, a plain GDAL warp of the same assets onto the same grid, written the same
way (:mod:`plain_warp`), gives what co-registration costs above warping (``plain_warp_s`` next to
``coregistration_s``). With ``--repeats N`` the blocks and plain-warp cases run N times taking
turns, and each row holds the medians of its runs: a peak moves by a fifth between runs of the
same case. The new shift estimator and the Powell search it replaced run taking turns
on the same samples (:mod:`shift_estimators`). The 1-minute load average is recorded before and
after. Prints a table and writes ``benchmarks/results/coregistration.json``.

``--readers warpedvrt stackstac`` instead compares scene readers (``coregister(reader=...)``) on
the ``--crop-px`` square, with shifted COG copies in place of the VRTs (stackstac reads a VRT
under a lock, a GeoTIFF from several threads): each case in its own subprocess, the readers
taking turns for ``--rounds`` rounds, wall time, CPU seconds and peak RSS per case and the load
average before and after; writes ``benchmarks/results/coregistration_readers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from process_usage import cpu_seconds, peak_rss_mb

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


def build_test_set(out: Path, size_px: int, dates: int, cogs: bool = False) -> list[dict]:
    """Native-resolution COGs of the tile's upper-left ``size_px`` square, shifted VRTs per date
    (or shifted copies of the COGs: stackstac reads a VRT under a lock, a GeoTIFF in parallel),
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
            path = (_shifted_cog if cogs else _shifted_vrt)(out / f"{name}.tif", folder, dy, dx)
            item["assets"][asset_key(item, name)]["href"] = path.as_uri()
        items.append(item)
    return items


def _shifted_georeference(src, dy: float, dx: float) -> tuple[float, ...]:
    """The GDAL geotransform that shows ``src``'s content (dy, dx) pixels further down-right, as
    scipy.ndimage.shift does."""
    t = src.transform
    return (t.c + dx * 10, t.a, 0.0, t.f - dy * 10, 0.0, t.e)


def _shifted_vrt(cog: Path, folder: Path, dy: float, dx: float) -> Path:
    """A VRT of ``cog`` in ``folder`` whose georeference is shifted by (dy, dx) 10 m pixels."""
    import rasterio

    with rasterio.open(cog) as src:
        geo = _shifted_georeference(src, dy, dx)
        vrt = folder / f"{cog.stem}.vrt"
        vrt.write_text(
            f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">'
            f"<SRS>{src.crs.to_wkt()}</SRS>"
            f"<GeoTransform>{', '.join(repr(v) for v in geo)}</GeoTransform>"
            f'<VRTRasterBand dataType="{VRT_TYPES[src.dtypes[0]]}"'
            f' band="1"><NoDataValue>0</NoDataValue><SimpleSource>'
            f"<SourceFilename>{cog}</SourceFilename>"
            f"<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
        )
    return vrt


def _shifted_cog(cog: Path, folder: Path, dy: float, dx: float) -> Path:
    """A copy of ``cog`` in ``folder`` whose georeference is shifted by (dy, dx) 10 m pixels."""
    import rasterio

    with rasterio.open(cog) as src:
        profile = {**src.profile, "driver": "COG", "blocksize": 512}
        profile["transform"] = rasterio.Affine.from_gdal(*_shifted_georeference(src, dy, dx))
        for key in ("blockxsize", "blockysize", "tiled", "interleave"):
            profile.pop(key, None)
        path = folder / cog.name
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(1), 1)
    return path


def run_case(
    items_path: Path, size_px: int, chunk_px: int, out: Path, reader: str = "warpedvrt"
) -> dict:
    """Co-register the square ``size_px`` grid at the upper-left of the tile with ``reader``,
    write it, measure."""
    import numpy as np

    from pipelines.coregistration import coregister
    from pipelines.dates import stack_dates
    from pipelines.stack_store import open_stack, write_stack

    items = json.loads(items_path.read_text())
    start, cpu_start = time.perf_counter(), cpu_seconds()
    stack = coregister(
        items, _bench_grid(size_px), region="29RKH", chunk_px=chunk_px, reader=reader
    )
    write_stack(stack, out)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    written = open_stack(out)
    planted = np.array(SHIFTS_PX * len(items))[: len(items)]
    dates = stack_dates(written)
    reference = planted[dates.index(written.attrs["reference_date"])]
    error = np.abs(written.shift_px.values - (planted - reference)).max()
    return {
        "reader": reader,
        "size_px": size_px,
        "dates": len(items),
        "chunk_px": chunk_px,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "pixels_per_s": round(len(items) * size_px * size_px / wall),
        "max_shift_error_px": round(float(error), 4),
        "valid_fraction": [round(float(v), 4) for v in written.valid_fraction.values],
    }


def run_plain_case(items_path: Path, size_px: int, chunk_px: int, out: Path) -> dict:
    """The same assets warped onto the same grid and written the same way, no shift measured or
    corrected (:mod:`plain_warp`): what co-registration costs above a plain warp."""
    from plain_warp import plain_warp_stack

    from pipelines.stack_store import write_stack

    items = json.loads(items_path.read_text())
    start = time.perf_counter()
    write_stack(plain_warp_stack(items, _bench_grid(size_px), chunk_px), out)
    wall = time.perf_counter() - start
    return {
        "size_px": size_px,
        "dates": len(items),
        "chunk_px": chunk_px,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "pixels_per_s": round(len(items) * size_px * size_px / wall),
    }


def _bench_grid(size_px: int):
    """The square ``size_px`` grid at the upper-left corner of the 29RKH tile."""
    from affine import Affine

    from pipelines.grid import Grid

    left, top = 199980.0, 2800020.0
    return Grid(32629, Affine(10.0, 0.0, left, 0.0, -10.0, top), width=size_px, height=size_px)


def pipeline_shift_samples(items: list[dict], sample_px: int):
    """(name, (reference, moving, valid), planted shift) of each date against the first: B08
    and the valid mask of the upper-left ``sample_px`` square, as the co-registration reads its
    shift sample."""
    import numpy as np

    from pipelines.bands import SCL_INVALID_DEFAULT
    from pipelines.scene_reader import mosaic_block

    grid = _bench_grid(sample_px)
    first = mosaic_block([items[0]], grid, ["B08"], SCL_INVALID_DEFAULT, ())
    for d, item in enumerate(items[1:], start=1):
        moving = mosaic_block([item], grid, ["B08"], SCL_INVALID_DEFAULT, ())
        valid = (first[1] > 0.5) & (moving[1] > 0.5)
        planted = np.subtract(SHIFTS_PX[d % len(SHIFTS_PX)], SHIFTS_PX[0])
        images = (np.nan_to_num(first[0]), np.nan_to_num(moving[0]), valid)
        yield f"{sample_px} px B08 date {d}", images, tuple(planted)


def compare_estimators(items: list[dict], sample_px: int) -> dict:
    """The new shift estimator against the Powell search it replaced, on the benchmark's shift
    samples and on shifts planted on the real tile at 100 m, taking turns."""
    from itertools import chain

    from shift_estimators import compare, powell_estimate_shift, real_tile_samples

    from pipelines.shift import estimate_shift

    samples = chain(pipeline_shift_samples(items, sample_px), real_tile_samples(REAL_TILE))
    return compare(samples, {"upsampled_dft": estimate_shift, "powell": powell_estimate_shift})


def measure(
    items_path: Path,
    size_px: int,
    chunk_px: int,
    tmp: Path,
    cache_mb: int,
    reader: str = "warpedvrt",
    plain: bool = False,
) -> dict:
    """One case in a fresh subprocess (its own peak RSS), its output zarr removed afterwards;
    ``plain``: the plain warp instead of co-registration (``reader`` is then unused)."""
    out = tmp / f"stack_{size_px}_{chunk_px}_{reader}.zarr"
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--plain-case" if plain else "--case",
            str(items_path),
            str(size_px),
            str(chunk_px),
            str(out),
            reader,
        ],
        cwd=REPO,
        env={**os.environ, "GDAL_CACHEMAX": str(cache_mb)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"case {size_px} px, blocks {chunk_px}, {reader}: {result.stderr[-2000:]}"
        )
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_readers(args: argparse.Namespace) -> None:
    """The readers side by side on the ``--crop-px`` square: each case in its own subprocess,
    the readers taking turns round after round, the load average recorded around them."""
    from statistics import median

    from matter_model.atomic_io import atomic_write_text
    from pipelines.coregistration import DEFAULT_CHUNK_PX

    chunk_px = args.chunk_px or DEFAULT_CHUNK_PX
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="coreg-readers-") as tmp_name:
        tmp = Path(tmp_name)
        items_path = tmp / "items.json"
        items_path.write_text(json.dumps(build_test_set(tmp, args.crop_px, args.dates, cogs=True)))
        runs = []
        for r in range(args.rounds):
            order = args.readers if r % 2 == 0 else args.readers[::-1]
            for reader in order:
                row = measure(items_path, args.crop_px, chunk_px, tmp, args.gdal_cache_mb, reader)
                runs.append({"round": r, "load_1min": round(os.getloadavg()[0], 2), **row})
                print(json.dumps(runs[-1]), flush=True)
    load_after = [round(v, 2) for v in os.getloadavg()]
    first, *others = args.readers
    summary = {
        name: {
            key: median(row[key] for row in runs if row["reader"] == name)
            for key in ("wall_s", "cpu_s", "peak_rss_mb")
        }
        for name in args.readers
    }
    ratios = {
        f"{other}/{first}": {
            key: round(
                median(
                    b[key] / a[key]
                    for a, b in zip(
                        [x for x in runs if x["reader"] == first],
                        [x for x in runs if x["reader"] == other],
                        strict=True,
                    )
                ),
                3,
            )
            for key in ("wall_s", "cpu_s", "peak_rss_mb")
        }
        for other in others
    }
    result = {
        "machine": f"{os.cpu_count()} CPU cores",
        "test_set": (
            f"29RKH L2A upsampled to native resolution, {args.crop_px} px square from the tile's "
            f"upper-left corner, {args.dates} dates as shifted COG copies (planted shifts "
            f"{SHIFTS_PX[: args.dates]}), {chunk_px} px blocks"
        ),
        "gdal_cache_mb": args.gdal_cache_mb,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "runs": runs,
        "median": summary,
        "median_ratio_of_pairs": ratios,
    }
    print(f"{'reader':<12}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}")
    for name, row in summary.items():
        print(f"{name:<12}{row['wall_s']:>9.1f}{row['cpu_s']:>9.1f}{row['peak_rss_mb']:>9.0f}")
    print(f"ratios (median of round pairs): {ratios}; load {load_before} -> {load_after}")
    out = args.out or RESULTS / "coregistration_readers.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size-px", type=int, default=4096, help="grid side in 10 m pixels (10980: the tile)"
    )
    parser.add_argument("--crop-px", type=int, default=2048, help="side of the side-by-side crop")
    parser.add_argument("--dates", type=int, default=3)
    parser.add_argument("--gdal-cache-mb", type=int, default=256)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each blocks and plain-warp case (medians)"
    )
    parser.add_argument("--out", type=Path, default=None, help="the JSON to write")
    parser.add_argument(
        "--readers",
        nargs="+",
        help="compare these readers (coregister's READERS) side by side on the crop instead, "
        "taking turns for --rounds rounds; writes --out (default coregistration_readers.json)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the reader comparison")
    parser.add_argument("--chunk-px", type=int, default=None, help="block of the comparison")
    parser.add_argument("--case", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--plain-case", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case or args.plain_case:
        items_path, size_px, chunk_px, out, reader = args.case or args.plain_case
        case = (Path(items_path), int(size_px), int(chunk_px), Path(out))
        print(json.dumps(run_case(*case, reader) if args.case else run_plain_case(*case)))
        return
    if not REAL_TILE.exists():
        sys.exit(f"{REAL_TILE} is absent: set MATTER_REAL_DATA to the shared data folder")
    if args.readers:
        compare_readers(args)
        return
    from matter_model.atomic_io import atomic_write_text
    from pipelines.coregistration import DEFAULT_SAMPLE_PX

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="coreg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        items = build_test_set(tmp, args.size_px, args.dates)
        build_s = time.perf_counter() - start
        items_path = tmp / "items.json"
        items_path.write_text(json.dumps(items))
        rows = measure_cases(items_path, args, tmp)
        estimators = compare_estimators(items, DEFAULT_SAMPLE_PX)
    result = summarise(rows, args, build_s)
    result["shift_estimators"] = estimators
    result["load_average_1min"] = {
        "before": round(load_before[0], 2),
        "after": round(os.getloadavg()[0], 2),
    }
    print_table(rows, result)
    out = args.out or RESULTS / "coregistration.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def measure_cases(items_path: Path, args: argparse.Namespace, tmp: Path) -> dict[str, dict]:
    """Each case in its own subprocess; co-registration in blocks and the plain warp of the
    same size taking turns, ``--repeats`` times (each row then holds the medians and its runs)."""
    from pipelines.coregistration import DEFAULT_CHUNK_PX

    cache = args.gdal_cache_mb
    rows = {"in memory, crop": measure(items_path, args.crop_px, args.crop_px, tmp, cache)}
    runs: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for label, size in (("crop", args.crop_px), ("full grid", args.size_px)):
            for kind, plain in (("blocks", False), ("plain warp", True)):
                run = measure(items_path, size, DEFAULT_CHUNK_PX, tmp, cache, plain=plain)
                runs.setdefault(f"{kind}, {label}", []).append(run)
    return rows | {name: _medians(case_runs) for name, case_runs in runs.items()}


def _medians(runs: list[dict]) -> dict:
    """One case's runs as one row: the first run's fields, its figures the runs' medians, and
    each run's wall time and peak."""
    from statistics import median

    figures = ("wall_s", "cpu_s", "peak_rss_mb", "pixels_per_s")
    row = runs[0] | {k: median(r[k] for r in runs) for k in figures if k in runs[0]}
    if len(runs) > 1:
        row["runs"] = [{k: r[k] for k in ("wall_s", "peak_rss_mb")} for r in runs]
    return row


def summarise(rows: dict[str, dict], args: argparse.Namespace, build_s: float) -> dict:
    """The JSON's figures: the cases, their ratios, peak by size, plain warp against
    co-registration."""
    crop_mem, crop_blocks = rows["in memory, crop"], rows["blocks, crop"]
    return {
        "machine": f"{os.cpu_count()} CPU cores",
        "test_set": (
            f"29RKH L2A upsampled to native resolution, {args.size_px} px square, "
            f"{args.dates} dates with planted shifts {SHIFTS_PX[: args.dates]}"
        ),
        "build_s": round(build_s, 1),
        "gdal_cache_mb": args.gdal_cache_mb,
        "repeats": args.repeats,
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
        "peak_mb_by_size_px": {
            str(rows[f"blocks, {k}"]["size_px"]): rows[f"blocks, {k}"]["peak_rss_mb"]
            for k in ("crop", "full grid")
        },
        "plain_warp_vs_coregistration": {
            str(rows[f"blocks, {k}"]["size_px"]): {
                "coregistration_s": rows[f"blocks, {k}"]["wall_s"],
                "plain_warp_s": rows[f"plain warp, {k}"]["wall_s"],
                "ratio": round(
                    rows[f"blocks, {k}"]["wall_s"] / rows[f"plain warp, {k}"]["wall_s"], 2
                ),
                "coregistration_peak_mb": rows[f"blocks, {k}"]["peak_rss_mb"],
                "plain_warp_peak_mb": rows[f"plain warp, {k}"]["peak_rss_mb"],
            }
            for k in ("crop", "full grid")
        },
    }


def print_table(rows: dict[str, dict], result: dict) -> None:
    """The cases, then the estimators and the in-memory bound, on stdout."""
    header = f"{'case':<22}{'px':>7}{'dates':>6}{'block':>7}{'wall s':>9}{'peak MB':>9}"
    print(header + f"{'Mpx/s':>8}{'shift err':>10}")
    for name, row in rows.items():
        error = row.get("max_shift_error_px")
        print(
            f"{name:<22}{row['size_px']:>7}{row['dates']:>6}{row['chunk_px']:>7}"
            f"{row['wall_s']:>9.1f}{row['peak_rss_mb']:>9.0f}"
            f"{row['pixels_per_s'] / 1e6:>8.2f}" + (f"{error:>10.3f}" if error is not None else "")
        )
    for label, figures in result["shift_estimators"]["summary"].items():
        print(
            f"estimator {label}: max error {figures['max_error_px']:.3f} px, "
            f"mean {figures['mean_error_px']:.3f} px, {figures['total_s']:.1f} s"
        )
    print(
        f"in memory / blocks peak on the crop: {result['crop_peak_ratio_in_memory_over_blocks']}x; "
        f"the full grid in memory would need over {result['full_grid_in_memory_lower_bound_mb']} MB"
    )


if __name__ == "__main__":
    main()
