"""`stac.replay`: `stac_items` reads the partition's STAC-GeoParquet snapshot instead of searching,
and the `StacApi` resource contacts no API and starts no demo server."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.imagery import stac_items
from assets.resources import DataStore, StacApi
from pipelines.stac.server import free_port
from pipelines.stac.snapshot import SnapshotMissingError, file_sha256, write_snapshot
from tests.assets.demo_chain import run_in, rustac_servers, tiny_config

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


def tree_sha256(path: Path) -> str:
    """One SHA-256 over a file, or over every file of a folder (names and bytes, in order)."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()


def dataset_digests(data: Path, region: str, time: str) -> dict[str, str]:
    """The digests of everything `patch_dataset` writes for one partition."""
    shard = f"{region}__{time}"
    paths = {
        "items": data / "items" / region / f"{time}.json",
        "snapshot": data / "items" / region / f"{time}.parquet",
        "stack": data / "stacks" / region / f"{time}.zarr",
        "screen": data / "screens" / region / f"{time}.csv",
        "shard": data / "patches" / "shards" / shard,
        "manifest": data / "patches" / "manifests" / f"{shard}.parquet",
    }
    digests = {name: tree_sha256(path) for name, path in paths.items()}
    provenance = json.loads((data / "patches" / "provenance.json").read_text())
    digests["manifest_digest"] = provenance["manifest_digest"]
    return digests


def patch_dataset(tmp: Path, config: Path, partition: str) -> str:
    dagster = str(Path(sys.executable).with_name("dagster"))
    tags = json.dumps({"dagster/partition": partition})
    args = [dagster, "job", "execute", "-m", "assets.definitions", "-j", "patch_dataset"]
    result = run_in([*args, "--tags", tags], config, tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two runs of the dataset job, each a few minutes on a busy machine
def test_a_replay_rebuilds_the_partition_identically_without_the_api(tmp_path: Path) -> None:
    region, time = "beauce", "2024-04-01"
    # The tiny world's 3 x 3 windows leave no negative 64 px away: 32 px keeps a few triplets.
    tiling = {"min_negative_distance_px": 32}
    patch_dataset(tmp_path, tiny_config(tmp_path, tiling=tiling), f"{region}|{time}")
    first = dataset_digests(tmp_path / "data", region, time)
    triplets = tmp_path / "data" / "patches" / "shards" / f"{region}__{time}" / "patches.csv"
    assert len(triplets.read_text().splitlines()) > 1  # a shard with triplets to compare

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: a search would fail
    replay = tiny_config(tmp_path, tiling=tiling, stac={"replay": True, "endpoint": closed})
    log = patch_dataset(tmp_path, replay, f"{region}|{time}")
    assert "stac.replay: reading the items" in log and "rustac serve) at" not in log
    assert not rustac_servers(tmp_path)
    assert dataset_digests(tmp_path / "data", region, time) == first
