"""Tiling throughput: 256 x 256 x 12-band patches from COGs on local disk into the patch store.

Ours is the project's tiling path (``pipelines.cog_stack.CogStack`` as the pixel source of
``pipelines.tiling.tile_to_store``, which writes shards with ``matter_model.patch_store``);
torchgeo's is ``RasterDataset`` (``separate_files``) with a ``RandomGeoSampler`` and a
``DataLoader``, reading the same COGs into tensors (it writes nothing). Each measurement runs in
a fresh subprocess, ours in the project's environment and torchgeo's in its own
(``benchmarks/.venv-torchgeo``, made by ``make bench``), taking turns within each repeat so that a
load change on the machine hits both alike. Peak memory is the subprocess's peak resident set;
CPU seconds (every thread) are recorded too, since on a shared machine they vary less than the
wall clock, and the load average is written beside the figures.

Test set (built in a temporary folder from the real 29RKH L2A tile in ``../shared/data``, whose
files are 10x downsampled but carry the tile's real bounds): the 12 L2A bands and the SCL over
40 x 40 km at their native resolution (10 m bands 3996 x 3996 px), upsampled bilinearly (SCL:
nearest), written as COGs with DEFLATE, predictor 2, 512 px blocks, uint16. Several dates are the
same files under each date's name (hard links): decoding costs the same, nothing is shared.

Ours cuts one triplet (anchor, positive, negative: 3 patches) per 256 px window, so it writes
3 patches per window while decoding the window at every date; torchgeo reads one patch per
sample. Patches per second: ours counts patches written to the store, torchgeo patches loaded.
One date allows no triplet (a positive needs a second date): that row reports none written.

The decode limit takes its turn beside them: every band and SCL file of every date decoded whole
by GDAL on every core, and nothing else, counted as the patches (one window at one date) its
pixels make; once at native resolution (what ours decodes) and once with GDAL resampling each
band onto the 10 m grid while decoding. Prints a table with the ratios (over torchgeo, and as a
share of the decode limit) and writes ``benchmarks/results/tiling.json``.

Then ours is taken apart once, in its own process (``parts`` in the JSON): each stage of the
same run alone, one after the other, on what the stage before it produced: reading every strip
the plan needs (decoding, and each strip made ready for the store's integers), cutting the
triplets from those strips, writing the shards from those triplets, and the store's codec alone
compressing every patch on one thread. Their CPU-seconds say where a run's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from process_usage import cpu_seconds, peak_rss_mb

if TYPE_CHECKING:  # the project's environment only: torchgeo's runs this file without it
    from pipelines.cog_stack import CogScene
    from pipelines.tiling import TilingSettings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TORCHGEO_PYTHON = REPO / "benchmarks" / ".venv-torchgeo" / "bin" / "python"
REAL_TILE = (
    Path(os.environ.get("MATTER_REAL_DATA", REPO.parent / "shared" / "data")) / "s2_l2a_cog_29RKH"
)
TILE = "29RKH"
FIRST_DATE = date(2020, 2, 19)
BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
NATIVE_M = {"B01": 60, "B09": 60, "B02": 10, "B03": 10, "B04": 10, "B08": 10, "SCL": 20}
PATCH = 256
# 40 km, a whole number of 60 m pixels, 30 km in from the tile's upper-left corner.
EXTENT_M, INSET_M = 39_960, 30_000
FILENAME = "T{tile}_{date}_{band}.tif"


def build_test_set(tile_dir: Path, out: Path, dates: int) -> None:
    """The 13 COGs of one date at native resolution, then hard links for the other dates."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import from_bounds

    from matter_model.atomic_io import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    first = FIRST_DATE.strftime("%Y%m%d")
    for band in (*BANDS, "SCL"):
        target = out / FILENAME.format(tile=TILE, date=first, band=band)
        if target.exists():
            continue
        res = NATIVE_M.get(band, 20)
        with rasterio.open(tile_dir / f"{band}.tif") as src:
            left, top = src.bounds.left + INSET_M, src.bounds.top - INSET_M
            bounds = (left, top - EXTENT_M, left + EXTENT_M, top)
            size = EXTENT_M // res
            pixels = src.read(
                1,
                window=from_bounds(*bounds, transform=src.transform),
                out_shape=(size, size),
                resampling=Resampling.nearest if band == "SCL" else Resampling.bilinear,
            )
            profile = {
                "driver": "COG",
                "width": size,
                "height": size,
                "count": 1,
                "dtype": np.uint8 if band == "SCL" else np.uint16,
                "crs": src.crs,
                "transform": rasterio.transform.from_origin(left, top, res, res),
                "nodata": 0,
                "compress": "DEFLATE",
                "predictor": 2,
                "blocksize": 512,
                "overviews": "NONE",
            }
        with atomic_file(target) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.write(pixels, 1)
    for t in range(1, dates):
        day = (FIRST_DATE + timedelta(days=5 * t)).strftime("%Y%m%d")
        for band in (*BANDS, "SCL"):
            link = out / FILENAME.format(tile=TILE, date=day, band=band)
            if not link.exists():
                os.link(out / FILENAME.format(tile=TILE, date=first, band=band), link)


def date_names(dates: int) -> list[str]:
    """The ``YYYYMMDD`` names of the first ``dates`` dates of the test set."""
    return [(FIRST_DATE + timedelta(days=5 * t)).strftime("%Y%m%d") for t in range(dates)]


def elapsed(start: float, cpu_start: float) -> dict:
    """Wall and CPU seconds since ``start`` and ``cpu_start``."""
    return {"seconds": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu_start}


def usage(start: float, cpu_start: float, patches: int) -> dict:
    """Patches, wall and CPU seconds since the starts, and this process's peak resident set."""
    return {"patches": patches, **elapsed(start, cpu_start), "peak_mb": peak_rss_mb()}


def cog_scenes(folder: Path, dates: int) -> list[CogScene]:
    """The first ``dates`` dates of the test set as ``pipelines.cog_stack.CogScene``."""
    from pipelines.cog_stack import CogScene

    def path(day: str, band: str) -> str:
        return str(folder / FILENAME.format(tile=TILE, date=day, band=band))

    return [
        CogScene(f"{d[:4]}-{d[4:6]}-{d[6:]}", {b: path(d, b) for b in BANDS}, path(d, "SCL"))
        for d in date_names(dates)
    ]


def tiling_settings() -> TilingSettings:
    """One triplet per window, negatives from the window's strip, a strip per window row."""
    from pipelines.tiling import TilingSettings

    return TilingSettings(
        min_valid_fraction=0.5,
        min_negative_distance_px=2 * PATCH,
        max_pairs_per_window=1,
        strip_rows=1,
    )


def run_ours(folder: Path, dates: int, store: Path) -> dict:
    """Tile ``dates`` dates of the test set into a patch store, end to end from the COGs."""
    from pipelines.cog_stack import CogStack
    from pipelines.tiling import all_windows, tile_to_store

    scenes = cog_scenes(folder, dates)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    with CogStack(scenes, BANDS, region="benchmark", tile=TILE) as source:
        result = tile_to_store(
            source, all_windows(source.grid, PATCH), store, "benchmark", BANDS, tiling_settings()
        )
    return usage(start, cpu_start, 3 * result.triplets)


def run_torchgeo(folder: Path, dates: int, samples: int) -> dict:
    """Load ``samples`` random 256 px patches of every band through torchgeo (its own env)."""
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import RandomGeoSampler

    class Sentinel2Cogs(RasterDataset):
        filename_glob = "T*_B02.tif"
        filename_regex = r"^T(?P<tile>\w{5})_(?P<date>\d{8})_(?P<band>B\w{2})\.tif$"
        date_format = "%Y%m%d"
        separate_files = True
        all_bands = BANDS
        rgb_bands = ("B04", "B03", "B02")

    start, cpu_start = time.perf_counter(), cpu_seconds()
    # Only the files of the first ``dates`` dates: the folder may hold more.
    days = date_names(dates)
    paths = [str(folder / FILENAME.format(tile=TILE, date=d, band="B02")) for d in days]
    dataset = Sentinel2Cogs(paths=paths, bands=list(BANDS))
    sampler = RandomGeoSampler(
        dataset, size=PATCH, length=samples, generator=torch.Generator().manual_seed(0)
    )
    loader = DataLoader(dataset, sampler=sampler, batch_size=1, collate_fn=stack_samples)
    loaded = 0
    for batch in loader:
        image = batch["image"]
        assert image.shape[1:] == (len(BANDS), PATCH, PATCH), image.shape
        loaded += image.shape[0]
    return usage(start, cpu_start, loaded)


def run_decode(folder: Path, dates: int, resolution_m: int | None) -> dict:
    """The decode limit: every band and the SCL of ``dates`` dates decoded whole, GDAL using
    every core, nothing else done; counted as the 256 px patches (one window at one date) that
    the pixels make. At native resolution (``resolution_m`` None), or each band decoded onto a
    ``resolution_m`` grid by GDAL (nearest), as a reader that resamples while it decodes would."""
    import rasterio
    from rasterio.enums import Resampling

    start, cpu_start = time.perf_counter(), cpu_seconds()
    windows = (EXTENT_M // 10 // PATCH) ** 2
    for day in date_names(dates):
        for band in (*BANDS, "SCL"):
            path = folder / FILENAME.format(tile=TILE, date=day, band=band)
            with rasterio.open(path, NUM_THREADS="ALL_CPUS") as src:
                side = EXTENT_M // resolution_m if resolution_m else None
                shape = (side, side) if side else None
                src.read(1, out_shape=shape, resampling=Resampling.nearest)
    return usage(start, cpu_start, windows * dates)


def timed(stage: Callable[[], object]) -> tuple[object, dict]:
    """Run ``stage``; its result, and its wall and CPU seconds."""
    start, cpu_start = time.perf_counter(), cpu_seconds()
    result = stage()
    return result, elapsed(start, cpu_start)


def run_parts(folder: Path, dates: int, store: Path) -> dict:
    """Ours taken apart: each stage of :func:`run_ours` alone, in turn, on the last one's
    output (every strip and triplet held at once, so the peak is not the run's)."""
    import numcodecs
    import zarr

    from matter_model.inputs import REFLECTANCE
    from matter_model.patch_store import CODECS, StoreInfo, write_shard
    from pipelines.cog_stack import CogStack
    from pipelines.tiling import _cut, _plan, _read_rows, _strips, all_windows

    settings = tiling_settings()
    info = StoreInfo.encoded(BANDS, PATCH, REFLECTANCE)
    with CogStack(cog_scenes(folder, dates), BANDS, region="benchmark", tile=TILE) as source:
        (kept, plan, _), planning = timed(
            lambda: _plan(source, all_windows(source.grid, PATCH), settings)
        )
        parts = list(_strips(kept, plan, settings.strip_rows))
        rows, reading = timed(
            lambda: [_read_rows(source, kept, part, False, info.dtype) for _, part in parts]
        )
        triplets, cutting = timed(
            lambda: [
                _cut(source, kept, part, len(BANDS), None, info.dtype, read)
                for (_, part), read in zip(parts, rows, strict=True)
            ]
        )
    _, writing = timed(
        lambda: [
            write_shard(store, f"parts-{k:04d}", info, t.anchor, t.positive, t.negative, t.patches)
            for (k, _), t in zip(parts, triplets, strict=True)
        ]
    )
    blosc = CODECS[info.codec]()[0]
    if not isinstance(blosc, zarr.codecs.BloscCodec):
        raise ValueError(f"the parts time Blosc alone; the store's codec is {info.codec}")
    codec = numcodecs.Blosc(
        cname=blosc.cname.value,
        clevel=blosc.clevel,
        shuffle={"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[blosc.shuffle.value],
        typesize=np.dtype(info.dtype).itemsize,
    )
    numcodecs.blosc.set_nthreads(1)
    patches = [p for t in triplets for role in (t.anchor, t.positive, t.negative) for p in role]
    sizes, compressing = timed(lambda: [len(codec.encode(p)) for p in patches])
    return {
        "patches": len(patches),
        "codec": info.codec,
        "bytes_per_patch": sum(sizes) / len(sizes),
        "raw_bytes_per_patch": patches[0].nbytes,
        "planning": planning,
        "reading": reading,
        "cutting": cutting,
        "writing": writing,
        "compressing_one_thread": compressing,
        "peak_mb": peak_rss_mb(),
    }


OURS, TORCHGEO, DECODE_NATIVE, DECODE_10M = "ours", "torchgeo", "decode-native", "decode-10m"
SIDES = (OURS, TORCHGEO, DECODE_NATIVE, DECODE_10M)
PARTS = "ours-parts"


def run_side(side: str, folder: Path, dates: int, samples: int, store: Path) -> dict:
    """One side's measurement, in this process."""
    if side == OURS:
        return run_ours(folder, dates, store)
    if side == TORCHGEO:
        return run_torchgeo(folder, dates, samples)
    if side == PARTS:
        return run_parts(folder, dates, store)
    return run_decode(folder, dates, None if side == DECODE_NATIVE else 10)


def measure(side: str, folder: Path, dates: int, samples: int) -> dict:
    """One measurement in a fresh subprocess of ``side``'s environment."""
    python = str(TORCHGEO_PYTHON) if side == TORCHGEO else sys.executable
    with tempfile.TemporaryDirectory(dir=folder.parent) as store:
        command = [python, __file__, "--worker", side, "--folder", str(folder)]
        command += ["--dates", str(dates), "--samples", str(samples), "--store", store]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} run ({dates} dates) failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    if side == PARTS:
        return row
    row["patches_per_s"] = row["patches"] / row["seconds"] if row["patches"] else None
    row["patches_per_cpu_s"] = row["patches"] / row["cpu_s"] if row["patches"] else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="head-to-head runs (median)")
    parser.add_argument("--dates", type=int, default=4, help="dates of the head-to-head")
    parser.add_argument("--curve", default="1,4,16", help="dates of the cost curve")
    parser.add_argument("--samples", type=int, default=300, help="torchgeo patches per run")
    parser.add_argument("--worker", choices=(*SIDES, PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_side(args.worker, args.folder, args.dates, args.samples, args.store)))
        return

    if not REAL_TILE.is_dir():
        sys.exit(f"the real tile {REAL_TILE} is absent: set MATTER_REAL_DATA to the shared data")
    if not TORCHGEO_PYTHON.exists():
        sys.exit(f"no torchgeo environment at {TORCHGEO_PYTHON}: run `make bench`, which makes it")
    curve = [int(d) for d in args.curve.split(",")]
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cogs"
        started = time.perf_counter()
        build_test_set(REAL_TILE, folder, max([args.dates, *curve]))
        print(f"test set built in {time.perf_counter() - started:.1f} s")
        head: dict[str, list[dict]] = {side: [] for side in SIDES}
        for _ in range(args.repeats):
            for side in head:
                head[side].append(measure(side, folder, args.dates, args.samples))
        rows = []
        for dates in curve:
            for side in (OURS, TORCHGEO):
                row = head[side][0] if dates == args.dates else None
                rows.append(
                    {"side": side, "dates": dates}
                    | (row or measure(side, folder, dates, args.samples))
                )
        parts = measure(PARTS, folder, args.dates, args.samples)
    result = summary(head, args) | {
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "runs": head,
        "cost_curve": rows,
        "parts": parts,
    }
    # The project's environment only: torchgeo's worker runs this file without it.
    from matter_model.atomic_io import atomic_write_text

    out = RESULTS / "tiling.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    report(result, rows, args)
    report_parts(parts)
    print(f"wrote {out.relative_to(REPO)}")


def summary(head: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    """The medians of the head-to-head runs and the ratios the targets are about."""

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in head[side])

    result = {
        "patch": f"{PATCH} x {PATCH} px, {len(BANDS)} bands",
        "test_set": f"{EXTENT_M / 1000:.0f} x {EXTENT_M / 1000:.0f} km of tile {TILE}, native "
        "resolution COGs (DEFLATE, predictor 2, 512 px blocks, uint16)",
        "dates": args.dates,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
    }
    for side in SIDES:
        key = side.replace("-", "_")
        for figure in ("patches_per_s", "patches_per_cpu_s", "peak_mb"):
            result[f"{key}_{figure}"] = median(side, figure)
    ours = result["ours_patches_per_s"]
    result["speedup"] = ours / result["torchgeo_patches_per_s"]
    result["cpu_speedup"] = result["ours_patches_per_cpu_s"] / result["torchgeo_patches_per_cpu_s"]
    result["share_of_decode_native"] = ours / result["decode_native_patches_per_s"]
    result["share_of_decode_10m"] = ours / result["decode_10m_patches_per_s"]
    return result


def report(result: dict, rows: list[dict], args: argparse.Namespace) -> None:
    """Print the head-to-head table, the ratios and the cost curve."""
    print(f"\n{args.dates} dates, median of {args.repeats}:")
    print(f"{'':14} {'patches/s':>10} {'per CPU-s':>10} {'peak MB':>8}")
    for side in SIDES:
        key = side.replace("-", "_")
        print(
            f"{side:14} {result[f'{key}_patches_per_s']:10.1f} "
            f"{result[f'{key}_patches_per_cpu_s']:10.1f} {result[f'{key}_peak_mb']:8.0f}"
        )
    load = result["load_average_1min"]
    print(
        f"speedup over torchgeo {result['speedup']:.2f}x (target 5x), per CPU-second "
        f"{result['cpu_speedup']:.2f}x; share of the decode limit "
        f"{result['share_of_decode_native']:.2f} native, {result['share_of_decode_10m']:.2f} at "
        f"10 m (target 1/3); load average {load['start']:.1f} at the start, "
        f"{load['end']:.1f} at the end"
    )
    print(
        f"\ncost curve:\n{'side':10} {'dates':>5} {'patches':>8} {'seconds':>8} {'CPU s':>7} "
        f"{'peak':>11}"
    )
    for r in rows:
        print(
            f"{r['side']:10} {r['dates']:5d} {r['patches']:8d} {r['seconds']:8.2f} "
            f"{r['cpu_s']:7.2f} {r['peak_mb']:8.0f} MB"
        )


def report_parts(parts: dict) -> None:
    """Print ours taken apart: each stage's wall and CPU seconds alone."""
    print(
        f"\nours taken apart ({parts['patches']} patches, {parts['codec']}: "
        f"{parts['bytes_per_patch'] / 1000:.0f} kB of {parts['raw_bytes_per_patch'] / 1000:.0f} "
        f"per patch):\n{'stage':24} {'seconds':>8} {'CPU s':>7}"
    )
    for stage in ("planning", "reading", "cutting", "writing", "compressing_one_thread"):
        print(f"{stage:24} {parts[stage]['seconds']:8.2f} {parts[stage]['cpu_s']:7.2f}")


if __name__ == "__main__":
    main()
