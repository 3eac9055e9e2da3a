"""What a run left on disk: digests of its outputs, hidden leftovers, materialised partitions
whose files are missing."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

# Names atomic writers use for work in progress: ``.tmp.<host>.<pid>...`` and ``.trash...``
# (matter_model.atomic_io), ``.<name>.<hex>.tmp`` (older writers).
HIDDEN_WORK = (".tmp.", ".trash.")

# Inputs, not outputs: the generated world.
NOT_OUTPUTS = ("demo_world",)

# The found items keep the links of the STAC API that served them: the demo's `rustac serve` is
# on a free port, another at each run. Digests are taken with the port masked, in the items'
# JSON and in their STAC-GeoParquet snapshot (compared row by row, as JSON).
SERVER_PORT = re.compile(rb"http://127\.0\.0\.1:\d+")

# Training's metrics.json records how long the run took: digests are taken without these keys.
TIMINGS = ("wall_s", "samples_per_s")

# Metadata keys of a materialisation that name its output file or folder.
OUTPUT_KEYS = ("path", "shard", "checkpoint_path", "export_path", "report")


def _content(path: Path) -> bytes:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        data = json.dumps(rows, sort_keys=True, default=str).encode()
    else:
        data = path.read_bytes()
    if path.name == "metrics.json":
        metrics = json.loads(data)
        data = json.dumps({k: v for k, v in metrics.items() if k not in TIMINGS}).encode()
    masked = path.suffix in (".json", ".parquet")
    return SERVER_PORT.sub(b"http://127.0.0.1:PORT", data) if masked else data


def digests(root: Path, skip: tuple[str, ...] = NOT_OUTPUTS) -> dict[str, str]:
    """sha256 of every file under ``root`` (JSON and GeoParquet with the local server's port
    masked, training metrics without their timings), by path
    relative to it, but those under ``skip`` and hidden work in progress (see :func:`leftovers`)."""
    found = {}
    for folder, _, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        if rel.parts and (rel.parts[0] in skip or any(map(_is_work, rel.parts))):
            continue
        for name in filter(lambda n: not _is_work(n), files):
            found[str(rel / name)] = hashlib.sha256(_content(Path(folder) / name)).hexdigest()
    return found


def leftovers(root: Path) -> list[str]:
    """Hidden work-in-progress files and folders anywhere under ``root``."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if _is_work(name):
                found.append(str(Path(folder, name).relative_to(root)))
    return sorted(found)


def _is_work(name: str) -> bool:
    return name.startswith(HIDDEN_WORK) or (name.startswith(".") and name.endswith(".tmp"))


def differences(expected: dict[str, str], found: dict[str, str]) -> list[str]:
    """Paths missing, extra or with other bytes in ``found``."""
    paths = sorted(set(expected) | set(found))
    return [p for p in paths if expected.get(p) != found.get(p)]


def materialised_but_missing(home: Path, assets: list[str]) -> list[str]:
    """Partitions the Dagster instance at ``home`` records as materialised whose output path
    (a metadata value of the event named in ``OUTPUT_KEYS``) is missing or empty."""
    import dagster as dg

    missing = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for asset in assets:
            records = instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
            for record in records:
                event = record.asset_materialization
                for key in OUTPUT_KEYS:
                    value = event.metadata.get(key) if event else None
                    if value is None:
                        continue
                    path = Path(str(value.value))
                    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
                        missing.append(f"{asset}[{event.partition}]: {path}")
    return missing
