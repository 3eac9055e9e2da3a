"""A partition's STAC items frozen as STAC-GeoParquet: what later stages read, and what a replay
reads instead of searching.

The snapshot is written with rustac (its own STAC-GeoParquet writer), under a hidden temporary
name beside its target and renamed into place, so a reader sees the old snapshot or the new one
whole. The same items give the same bytes, so its SHA-256 names the items a dataset was cut from.
Items read back from it are what the pipeline uses in both modes (rustac migrates them to its
STAC version and writes numbers by their column type), so a replay sees exactly what the first
run saw.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import rustac

from matter_model.atomic_io import atomic_file

log = logging.getLogger(__name__)


class SnapshotMissingError(FileNotFoundError):
    """A replay asked for a partition's item snapshot that was never written."""


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_snapshot(path: str | Path, items: Sequence[dict]) -> str:
    """Write ``items`` as STAC-GeoParquet at ``path`` atomically; return the file's SHA-256."""
    if not items:
        raise ValueError(f"no items to snapshot at {path}: a snapshot holds one item or more")
    with atomic_file(path) as tmp:
        rustac.write_sync(str(tmp), list(items), format="geoparquet")
    digest = file_sha256(path)
    log.info("snapshot of %d STAC items at %s (sha256 %s)", len(items), path, digest)
    return digest


def read_snapshot(path: str | Path, partition: str = "") -> list[dict]:
    """The items of the snapshot at ``path``; a missing one is an error that says what to do."""
    path = Path(path)
    if not path.exists():
        raise SnapshotMissingError(
            f"stac.replay is on but the STAC item snapshot {path} of partition "
            f"{partition or '?'} does not exist: materialise `stac_items` for it once with "
            "stac.replay false (the STAC API reachable), or copy the snapshot into the data store"
        )
    return list(rustac.read_sync(str(path), format="geoparquet", set_self_link=False)["features"])
