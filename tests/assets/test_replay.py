"""`stac.replay`: `stac_items` reads the partition's STAC-GeoParquet snapshot instead of searching,
and the `StacApi` resource contacts no API and starts no demo server."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.imagery import stac_items
from assets.resources import DataStore, StacApi
from pipelines.stac.snapshot import SnapshotMissingError, file_sha256, write_snapshot

PARTITION = "beauce|2024-04-01"  # of the embedded demo configuration


def materialise_items(store: DataStore, stac: StacApi) -> dg.MaterializeResult:
    context = dg.build_asset_context(partition_key=PARTITION)
    with dg.build_resources({"stac": stac}) as resources:
        return stac_items(context, stac=resources.stac, store=store)


def test_replay_starts_no_server_and_searches_nothing(tmp_path: Path) -> None:
    world = tmp_path / "demo_world"
    stac = StacApi(endpoint="demo", demo_world_root=str(world), replay=True)
    with (
        dg.build_resources({"stac": stac}) as resources,
        pytest.raises(RuntimeError, match="stac.replay is on"),
    ):
        resources.stac.url  # noqa: B018
    assert not world.exists()  # the demo world was not even generated


def test_replay_reads_the_snapshot(tmp_path: Path, tiny_world: Path) -> None:
    store = DataStore(root=str(tmp_path / "data"))
    items = json.loads((tiny_world / "items.json").read_text())["features"][:3]
    snapshot = store.items_snapshot("beauce", "2024-04-01")
    digest = write_snapshot(snapshot, items)
    stac = StacApi(endpoint="http://127.0.0.1:9", replay=True)  # nothing listens there
    result = materialise_items(store, stac)
    written = json.loads(store.items("beauce", "2024-04-01").read_text())["features"]
    assert [it["id"] for it in written] == [it["id"] for it in items]
    assert result.metadata["snapshot_sha256"] == digest == file_sha256(snapshot)
    assert result.metadata["items"] == 3 and "replay" in result.metadata["endpoint"]


def test_replay_without_a_snapshot_says_what_to_do(tmp_path: Path) -> None:
    store = DataStore(root=str(tmp_path / "data"))
    stac = StacApi(endpoint="http://127.0.0.1:9", replay=True)
    with pytest.raises(SnapshotMissingError, match=r"beauce/2024-04-01\.parquet of partition"):
        materialise_items(store, stac)
    assert not store.items("beauce", "2024-04-01").exists()
