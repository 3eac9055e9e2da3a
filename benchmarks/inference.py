"""Tiled inference over a whole stack: the ``material_embeddings`` and ``change_maps`` assets'
throughput and peak memory, on a 4096 px square and on the whole 10980 px tile.

Test set (built in a temporary folder from the real 29RKH L2A tile in ``../shared/data``, whose
files are 10x downsampled but carry the tile's real bounds): a co-registered stack of 2 dates and
the 9 MATTER bands, ``size`` px square from the tile's upper-left corner, upsampled to 10 m by
nearest-neighbour repeat and written block by block with :func:`pipelines.stack_store.write_stack`
(no date is ever whole in memory). Date 1 is the L2A reflectance (invalid where the SCL says so);
date 2 is date 1 with a per-band gain, a changed square and a cloud (invalid) square, so that
every step of the assets has work to do.

The model is the network of ``--config`` (``oscd.yaml``: scene-standardised inputs, as its patch
store holds) with untrained weights, saved as a checkpoint and loaded by the assets' own
:func:`matter_model.checkpoint.load_model`. Each asset runs in a fresh subprocess per size, as
Dagster runs them, calling the assets' functions (``write_embeddings`` with the default
``EmbeddingConfig``, then ``write_change_maps``) on the CPU with ``--threads`` threads; the
subprocess's own high-water mark (``process_usage.peak_rss_mb``) is its peak resident set.
Prints a table and writes ``benchmarks/results/inference.json`` with the load average before
and after each size (``--keep`` keeps the rows of the sizes not rerun).

``--network stand-in`` replaces the network by a copy of its input channels (as many as the
network outputs): what the assets hold around the network, on a size whose real run takes the
CPU too long (the network itself holds one tile's activations, whatever the stack's size).
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
from pathlib import Path

from process_usage import cpu_seconds, peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REAL_TILE = (
    Path(os.environ.get("MATTER_REAL_DATA", REPO.parent / "shared" / "data")) / "s2_l2a_cog_29RKH"
)
LEFT, TOP = 199980.0, 2800020.0  # the 29RKH tile's upper-left corner
SOURCE_M = {10: 100, 20: 200}  # the local files' pixel size, by the band's native resolution
CHUNK_PX = 1024  # the stack's blocks, as co-registration writes them
DATES = ("2020-02-19", "2020-02-24")
GAIN = 1.03  # date 2's reflectance over date 1's
PHASES = ("embeddings", "change_maps")


def _source(name: str) -> tuple:
    """One local band as float32 ``(h, w)`` and its pixel size in metres."""
    import numpy as np
    import rasterio

    with rasterio.open(REAL_TILE / f"{name}.tif") as src:
        return src.read(1).astype(np.float32), round(src.transform.a)


def _nearest(source, metres: int, y0: int, y1: int, x0: int, x1: int):
    """The 10 m pixels ``[y0, y1) x [x0, x1)`` of a coarser ``source`` band, nearest neighbour."""
    import numpy as np

    step = metres // 10
    return source[np.arange(y0, y1)[:, None] // step, np.arange(x0, x1)[None, :] // step]


def _date_block(date: int, sources: list, scl, size: int, block_info=None):
    """One block ``(1, C, h, w)`` of reflectance and its valid mask (the last channel)."""
    import numpy as np

    from pipelines.bands import SCL_INVALID_DEFAULT

    (_, _), (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    bands = np.stack([_nearest(s, m, y0, y1, x0, x1) for s, m in sources]) / 10000
    valid = ~np.isin(_nearest(*scl, y0, y1, x0, x1), SCL_INVALID_DEFAULT) & (bands > 0).all(0)
    if date == 1:  # a gain, a changed square and a cloud square
        bands = bands * GAIN
        yy, xx = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
        changed = (abs(yy - size // 3) < size // 20) & (abs(xx - size // 3) < size // 20)
        bands[:, changed] = np.linspace(0.05, 0.5, len(bands))[:, None]
        valid &= ~((abs(yy - 2 * size // 3) < size // 15) & (abs(xx - size // 2) < size // 15))
    bands[:, ~valid] = np.nan
    return np.concatenate([bands, valid[None]]).astype(np.float32)[None]


def build_stack(path: Path, size: int) -> None:
    """The 2-date, 9-band stack of the tile's upper-left ``size`` px square, written in blocks."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    from matter_model.bands import MATTER_BANDS
    from pipelines.stack_store import write_stack

    sources = [_source(name) for name in MATTER_BANDS]
    scl = _source("SCL")
    blocks = ((1,), (len(MATTER_BANDS) + 1,), *[(CHUNK_PX,) * (size // CHUNK_PX)] * 2)
    if size % CHUNK_PX:
        blocks = (*blocks[:2], *[(*blocks[2], size % CHUNK_PX)] * 2)
    cube = da.concatenate(
        [
            da.map_blocks(_date_block, t, sources, scl, size, chunks=blocks, dtype=np.float32)
            for t in range(len(DATES))
        ]
    )
    centres = 10 * (np.arange(size) + 0.5)
    stack = xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), cube[:, :-1]),
            "valid": (("time", "y", "x"), cube[:, -1] > 0.5),
        },
        coords={
            "time": np.array(DATES, dtype="datetime64[ns]"),
            "band": list(MATTER_BANDS),
            "y": TOP - centres,
            "x": LEFT + centres,
        },
        attrs={
            "crs": "EPSG:32629",
            "transform": [10.0, 0.0, LEFT, 0.0, -10.0, TOP],
            "region": "29RKH",
        },
    )
    write_stack(stack, path)


def save_untrained(config_path: Path, out: Path) -> Path:
    """A checkpoint of the config's network with untrained weights (seeded), as training saves
    one: its normalisation is that of the config's patch store."""
    import torch

    from matter_model.checkpoint import build_model, save_checkpoint
    from matter_model.inputs import REFLECTANCE, SCENE_STANDARDISED
    from matter_model.train import load_config

    config = load_config(config_path)
    normalisation = (
        SCENE_STANDARDISED if "oscd" in str(config.get("patch_store", "")) else REFLECTANCE
    )
    torch.manual_seed(0)
    state = {
        "model": build_model(config).state_dict(),
        "config": config,
        "normalisation": normalisation,
    }
    return save_checkpoint(out, state)


class StandIn:
    """In place of the network: its output's shape (``surface_residuals`` of ``features``
    channels) at next to no cost, so that a run measures what the assets hold around the
    network (the network's own memory is that of one tile, whatever the stack's size)."""

    training = False

    def __init__(self, features: int) -> None:
        self.features = features

    def eval(self) -> StandIn:
        return self

    def surface_residuals(self, x, window: int):
        """The input's channels, repeated to ``features`` channels."""
        import torch

        return x[:, torch.arange(self.features) % x.shape[1]]


def stand_in(model, config: dict, window: int) -> StandIn:
    """A :class:`StandIn` with as many output channels as ``model`` has."""
    import torch

    with torch.no_grad():
        probe = model.surface_residuals(torch.zeros(1, len(config["bands"]), 32, 32), window)
    return StandIn(probe.shape[1])


def run_phase(
    phase: str, stack_path: Path, checkpoint: Path, work: Path, threads: int, network: str
) -> dict:
    """One asset's work on the stack, as the asset does it, measured in this process."""
    import torch
    import xarray as xr

    from assets.inference import (
        CONFIG,
        ChangeMapConfig,
        EmbeddingConfig,
        write_change_maps,
        write_embeddings,
    )
    from matter_model.checkpoint import load_model
    from pipelines.stack_store import open_stack

    torch.set_num_threads(threads)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    stack = open_stack(stack_path)
    embeddings = work / "embeddings.zarr"
    if phase == "embeddings":
        model, config = load_model(checkpoint, "cpu")
        if network == "stand-in":
            model = stand_in(model, config, CONFIG.evaluation.window)
        write_embeddings(stack, model, config, embeddings, EmbeddingConfig(), "cpu")
        extra = {"normalisation": config["normalisation"]}
    else:
        written = xr.open_zarr(embeddings, consolidated=False, zarr_format=3)
        pairs = write_change_maps(stack, written, work / "change_maps", ChangeMapConfig())
        extra = {"changed_share": round(pairs[0]["changed_share"], 4)}
    return {
        "phase": phase,
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(cpu_seconds() - cpu_start, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **extra,
    }


def measure(
    phase: str, stack_path: Path, checkpoint: Path, work: Path, threads: int, network: str
) -> dict:
    """One phase in a fresh subprocess (its own peak RSS) with ``threads`` threads."""
    limits = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    command = [sys.executable, __file__, "--case", phase, str(stack_path), str(checkpoint)]
    result = subprocess.run(
        [*command, str(work), str(threads), network],
        cwd=REPO,
        env={**os.environ, **limits},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{phase} on {stack_path.name}: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_size(size: int, tmp: Path, checkpoint: Path, threads: int, network: str) -> dict:
    """Build the ``size`` px stack, run both assets on it, summarise, remove what they wrote."""
    work = tmp / f"run_{size}"
    work.mkdir()
    start = time.perf_counter()
    build_stack(work / "stack.zarr", size)
    build_s = time.perf_counter() - start
    stack = work / "stack.zarr"
    phases = {p: measure(p, stack, checkpoint, work, threads, network) for p in PHASES}
    embed_mb = sum(f.stat().st_size for f in (work / "embeddings.zarr").rglob("*") if f.is_file())
    shutil.rmtree(work, ignore_errors=True)
    wall = sum(p["wall_s"] for p in phases.values())
    pixels = size * size
    return {
        "size_px": size,
        "network": network,
        "dates": len(DATES),
        "build_s": round(build_s, 1),
        "phases": phases,
        "embeddings_mb_on_disk": round(embed_mb / 2**20, 1),
        "wall_s": round(wall, 2),
        "cpu_s": round(sum(p["cpu_s"] for p in phases.values()), 2),
        "peak_rss_mb": max(p["peak_rss_mb"] for p in phases.values()),
        "embed_px_per_s": round(len(DATES) * pixels / phases["embeddings"]["wall_s"]),
        "total_px_per_s": round(pixels / wall),
    }


def print_table(rows: list[dict]) -> None:
    """One line per size and phase, then the whole."""
    print(f"{'px':>6} {'step':<12}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}{'px/s':>10}")
    for row in rows:
        size, pixels = row["size_px"], row["size_px"] ** 2
        for name, p in row["phases"].items():
            rate = pixels * (len(DATES) if name == "embeddings" else 1) / p["wall_s"]
            print(
                f"{size:>6} {name:<12}{p['wall_s']:>9.1f}{p['cpu_s']:>9.1f}"
                f"{p['peak_rss_mb']:>9.0f}{rate:>10.0f}"
            )
        print(
            f"{size:>6} {'both':<12}{row['wall_s']:>9.1f}{row['cpu_s']:>9.1f}"
            f"{row['peak_rss_mb']:>9.0f}{row['total_px_per_s']:>10.0f}"
            f"  {row['network']}, load {row['load_average_before']} -> {row['load_average_after']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 10980])
    parser.add_argument("--config", type=Path, default=REPO / "matter_model/configs/oscd.yaml")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "inference.json")
    parser.add_argument(
        "--network",
        choices=["model", "stand-in"],
        default="model",
        help="stand-in: the network replaced by a copy of its input, to measure the memory "
        "around it on a size the CPU cannot run in reasonable time",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep --out's rows of other sizes or networks"
    )
    parser.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        phase, stack, checkpoint, work, threads, *network = args.case
        paths = Path(stack), Path(checkpoint), Path(work)
        print(json.dumps(run_phase(phase, *paths, int(threads), (network or ["model"])[0])))
        return
    if not REAL_TILE.exists():
        sys.exit(f"{REAL_TILE} is absent: set MATTER_REAL_DATA to the shared data folder")
    from matter_model.atomic_io import atomic_write_text

    rows = []
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = save_untrained(args.config, tmp / "checkpoint.pt")
        for size in args.sizes:
            load_before = [round(v, 2) for v in os.getloadavg()]
            row = run_size(size, tmp, checkpoint, args.threads, args.network)
            load_after = [round(v, 2) for v in os.getloadavg()]
            rows.append(
                {**row, "load_average_before": load_before, "load_average_after": load_after}
            )
            print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    result = {
        "machine": f"{os.cpu_count()} CPU cores, shared",
        "test_set": (
            f"29RKH L2A, {len(DATES)} dates, the 9 MATTER bands, upsampled to 10 m by "
            f"nearest-neighbour repeat; date 2 = date 1 x {GAIN}, a changed and a cloud square"
        ),
        "model": f"{args.config.name}, untrained weights, on the CPU, {args.threads} threads",
        "px_per_s": (
            "embed_px_per_s: pixels of one date embedded per second (both dates count); "
            "total_px_per_s: stack pixels per second of embeddings and change map together"
        ),
        "sizes": kept_rows(args.out, rows) if args.keep else rows,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def kept_rows(out: Path, rows: list[dict]) -> list[dict]:
    """``rows`` after those of ``out`` (if any) for other sizes or networks."""
    fresh = {(r["size_px"], r["network"]) for r in rows}
    old = json.loads(out.read_text())["sizes"] if out.exists() else []
    return [r for r in old if (r["size_px"], r["network"]) not in fresh] + rows


if __name__ == "__main__":
    main()
