"""The STAC-GeoParquet snapshot of a partition's items: atomic, reproducible, read back usable."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.stac.items import split_usable
from pipelines.stac.snapshot import (
    SnapshotMissingError,
    file_sha256,
    read_snapshot,
    write_snapshot,
)


@pytest.fixture
def demo_items(tiny_world: Path) -> list[dict]:
    return json.loads((tiny_world / "items.json").read_text())["features"]


def test_snapshot_round_trips_the_items(tmp_path: Path, demo_items: list[dict]) -> None:
    path = tmp_path / "items" / "beauce" / "2024-04-01.parquet"
    digest = write_snapshot(path, demo_items)
    assert digest == file_sha256(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    back = read_snapshot(path)
    assert [it["id"] for it in back] == [it["id"] for it in demo_items]
    assert [it["properties"]["datetime"][:10] for it in back] == [
        it["properties"]["datetime"][:10] for it in demo_items
    ]
    assert split_usable(back)[1] == []
    # what was read back survives another round trip unchanged
    write_snapshot(tmp_path / "again.parquet", back)
    assert read_snapshot(tmp_path / "again.parquet") == back


def test_same_items_give_the_same_bytes(tmp_path: Path, demo_items: list[dict]) -> None:
    first = write_snapshot(tmp_path / "a.parquet", demo_items)
    assert write_snapshot(tmp_path / "b.parquet", demo_items) == first
    assert write_snapshot(tmp_path / "a.parquet", demo_items[:2]) != first  # replaced whole


def test_real_items_stay_usable(tmp_path: Path, real_data: Callable[..., Path]) -> None:
    name = "earth-search-sentinel-2-c1-l2a-item-collection.json"
    data = json.loads(real_data("stac", "rustac", name).read_text())
    items, _ = split_usable(data["features"])
    write_snapshot(tmp_path / "es.parquet", items)
    back = read_snapshot(tmp_path / "es.parquet")
    assert len(split_usable(back)[0]) == len(items)


def test_a_missing_snapshot_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SnapshotMissingError, match="materialise `stac_items`.*stac.replay false"):
        read_snapshot(tmp_path / "nope.parquet", "beauce|2024-04-01")


def test_no_items_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one item or more"):
        write_snapshot(tmp_path / "empty.parquet", [])
    assert not list(tmp_path.iterdir())
