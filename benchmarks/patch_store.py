"""Patch-store encodings and codecs: bytes per patch, write and read speed, on real patches.

Test set: 32 px windows of real Sentinel-2 (OSCD L1C cities of ``../shared/data/oscd``, the 9
MATTER bands at 10 m): the anchor is a window at the first date, the positive the same window at
the second date, the negative another window, as the tiler cuts them. Each set is written twice,
as reflectance (DN / 10000, as read) and scene-standardised (each band of each date robustly
standardised over the city, as ``pipelines/oscd_patches.py`` stores them).

Every encoding (float32 as stores held before the integer encoding existed, and the integer
encoding of ``matter_model.patch_store.ENCODINGS``) is written with every codec of
``CODECS`` through ``write_shard`` (shards of 64 triplets, the tiler's unit), then read back in
a random order through ``TripletDataset`` (decode included). Figures are medians over
``--repeats`` runs taking turns, so that a load change hits every row alike; the largest decode
error against the float32 patches is checked. Prints a table and writes
``benchmarks/results/patch_store.json`` with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from matter_model.atomic_io import atomic_write_text
from matter_model.datasets.oscd import OSCD
from matter_model.inputs import REFLECTANCE, SCENE_STANDARDISED, standardise
from matter_model.patch_store import (
    CODECS,
    ROLES,
    TRIPLETS_PER_SHARD_FILE,
    StoreInfo,
    TripletDataset,
    write_shard,
)
from pipelines.blocks import as_blocks

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
OSCD_ROOT = Path(os.environ.get("MATTER_REAL_DATA", REPO.parent / "shared" / "data")) / "oscd"
PATCH = 32


def windows(image: np.ndarray) -> np.ndarray:
    """The non-overlapping ``PATCH`` px windows of ``(C, H, W)`` as ``(N, C, PATCH, PATCH)``."""
    blocks = as_blocks(image, PATCH)  # (C, rows, cols, PATCH, PATCH)
    return np.moveaxis(blocks, 0, 2).reshape(-1, image.shape[0], PATCH, PATCH)


def real_triplets(cities: list[str], limit: int) -> dict[str, dict[str, np.ndarray]]:
    """Anchor / positive / negative windows of ``cities``, as reflectance and standardised."""
    oscd = OSCD(OSCD_ROOT)
    sets: dict[str, list[list[np.ndarray]]] = {
        REFLECTANCE: [[], [], []],
        SCENE_STANDARDISED: [[], [], []],
    }
    rng = np.random.default_rng(0)
    for city in cities:
        loaded = oscd.load(city)
        for normalisation, prepare in (
            (REFLECTANCE, lambda x: x),
            (SCENE_STANDARDISED, standardise),
        ):
            first, second = windows(prepare(loaded.image_1)), windows(prepare(loaded.image_2))
            for role, array in zip(
                sets[normalisation],
                (first, second, first[rng.permutation(len(first))]),
                strict=True,
            ):
                role.append(array)
    return {
        normalisation: {
            role: np.concatenate(parts)[:limit].astype(np.float32)
            for role, parts in zip(ROLES, roles, strict=True)
        }
        for normalisation, roles in sets.items()
    }


def write_store(root: Path, info: StoreInfo, triplets: dict[str, np.ndarray]) -> float:
    """Write ``triplets`` in shards of 64 as the tiler does; seconds taken."""
    n = len(triplets["anchor"])
    start = time.perf_counter()
    for k, lo in enumerate(range(0, n, TRIPLETS_PER_SHARD_FILE)):
        part = {role: a[lo : lo + TRIPLETS_PER_SHARD_FILE] for role, a in triplets.items()}
        table = pd.DataFrame({"region": ["bench"] * len(part["anchor"])})
        write_shard(root, f"s{k:04d}", info, **part, patches=table)
    return time.perf_counter() - start


def read_store(root: Path) -> tuple[float, TripletDataset]:
    """Read every triplet in a random order, decoded; seconds taken."""
    dataset = TripletDataset(root)
    order = np.random.default_rng(1).permutation(len(dataset))
    start = time.perf_counter()
    for i in order:
        dataset[int(i)]
    return time.perf_counter() - start, dataset


def array_bytes(root: Path) -> int:
    """Bytes of the stored arrays (the patch tables and metadata left out)."""
    return sum(
        f.stat().st_size
        for role in ROLES
        for f in (root / "shards").glob(f"*/{role}/c/**/*")
        if f.is_file()
    )


def max_decode_error(dataset: TripletDataset, triplets: dict[str, np.ndarray]) -> float:
    """The largest absolute difference between a read patch and the one written."""
    worst = 0.0
    for i in range(0, len(dataset), 97):
        sample = dataset[i]
        for role in ROLES:
            worst = max(worst, float(np.abs(sample[role].numpy() - triplets[role][i]).max()))
    return worst


def measure(info: StoreInfo, triplets: dict[str, np.ndarray]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_s = write_store(root, info, triplets)
        read_s, dataset = read_store(root)
        n = len(triplets["anchor"])
        return {
            "write_triplets_per_s": n / write_s,
            "read_triplets_per_s": n / read_s,
            "bytes_per_patch": array_bytes(root) / (3 * n),
            "max_decode_error": max_decode_error(dataset, triplets),
        }


def variants(normalisation: str) -> list[tuple[str, StoreInfo]]:
    bands = tuple(f"b{i}" for i in range(9))
    rows = [
        ("float32", StoreInfo(bands, PATCH, normalisation=normalisation, codec=c)) for c in CODECS
    ]
    rows += [("integer", StoreInfo.encoded(bands, PATCH, normalisation, codec=c)) for c in CODECS]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cities", nargs="+", default=["brasilia", "montpellier"])
    parser.add_argument("--triplets", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "patch_store.json")
    args = parser.parse_args()

    load_before = os.getloadavg()
    data = real_triplets(args.cities, args.triplets)
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for normalisation, triplets in data.items():
            for encoding, info in variants(normalisation):
                key = (normalisation, encoding, info.codec)
                runs.setdefault(key, []).append(measure(info, triplets))
    rows = []
    for (normalisation, encoding, codec), measured in runs.items():
        row = {"normalisation": normalisation, "encoding": encoding, "codec": codec}
        for field in measured[0]:
            row[field] = statistics.median(m[field] for m in measured)
        rows.append(row)
    load_after = os.getloadavg()

    print(
        f"{'normalisation':<19}{'encoding':<9}{'codec':<23}{'B/patch':>9}{'write t/s':>11}"
        f"{'read t/s':>10}{'max err':>10}"
    )
    for r in rows:
        print(
            f"{r['normalisation']:<19}{r['encoding']:<9}{r['codec']:<23}{r['bytes_per_patch']:>9.0f}"
            f"{r['write_triplets_per_s']:>11.0f}{r['read_triplets_per_s']:>10.0f}"
            f"{r['max_decode_error']:>10.2g}"
        )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    result = {
        "cities": args.cities,
        "triplets": len(data[REFLECTANCE]["anchor"]),
        "patch_px": PATCH,
        "bands": 9,
        "repeats": args.repeats,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
