"""The code location loads, its graph and partitions come from the configuration, and the
dataset-refresh schedule asks for the newest time partition of every region."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np

from assets.config import load_config
from assets.definitions import defs
from assets.jobs import dataset_refresh
from assets.partitions import REGION_TIMES, region_time
from assets.resources import DataStore
from pipelines.demo_world import DEFAULT_SPEC, generate_demo_world

REPO = Path(__file__).resolve().parents[2]


def test_definitions_validate_from_the_command_line(tmp_path: Path) -> None:
    dagster = str(Path(sys.executable).with_name("dagster"))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [dagster, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_asset_graph_is_the_chain() -> None:
    graph = defs.resolve_asset_graph()
    chain = [
        "stac_items",
        "coregistered_stack",
        "change_screen",
        "patch_triplets",
        "matter_pretrained",
        "change_detection_eval",
    ]
    for upstream, downstream in zip(chain, chain[1:], strict=False):
        assert dg.AssetKey(upstream) in graph.get(dg.AssetKey(downstream)).parent_keys
    embeddings = graph.get(dg.AssetKey("material_embeddings"))
    assert {dg.AssetKey("coregistered_stack"), dg.AssetKey("matter_pretrained")} <= set(
        embeddings.parent_keys
    )
    assert embeddings.partitions_def == REGION_TIMES
    change_maps = graph.get(dg.AssetKey("change_maps"))
    assert dg.AssetKey("material_embeddings") in change_maps.parent_keys
    assert change_maps.partitions_def == REGION_TIMES
    selected = defs.resolve_job_def("matter_chain").asset_layer.selected_asset_keys
    assert {dg.AssetKey("material_embeddings"), dg.AssetKey("change_maps")} <= set(selected)
    for job in ("matter_chain", "patch_dataset", "pretrain_and_evaluate"):
        assert defs.resolve_job_def(job) is not None


def test_partitions_are_regions_by_quarter() -> None:
    keys = REGION_TIMES.get_partition_keys()
    assert sorted(keys) == sorted(
        f"{r}|{t}" for r in ("beauce", "lombardy") for t in ("2024-04-01", "2024-07-01")
    )


def test_time_dimension_keeps_partition_keys_and_store_paths(tmp_path: Path) -> None:
    """The time dimension was called "window" before: Dagster orders dimensions by name, and
    "region" < "time" as "region" < "window", so no key string or data-store path changed."""
    assert [d.name for d in REGION_TIMES.partitions_defs] == ["region", "time"]
    regions = REGION_TIMES.get_partitions_def_for_dimension("region")
    times = REGION_TIMES.get_partitions_def_for_dimension("time")
    before = dg.MultiPartitionsDefinition({"region": regions, "window": times})
    assert REGION_TIMES.get_partition_keys() == before.get_partition_keys()
    key = dg.MultiPartitionKey({"time": "2024-04-01", "region": "lombardy"})
    assert str(key) == "lombardy|2024-04-01"
    part = region_time(SimpleNamespace(partition_key="lombardy|2024-04-01"))
    assert (part.region, part.time, part.key) == ("lombardy", "2024-04-01", "lombardy|2024-04-01")
    assert (part.start.date(), part.end.date()) == (dt.date(2024, 4, 1), dt.date(2024, 7, 1))
    assert part.shard_id == "lombardy__2024-04-01"
    store = DataStore(root=str(tmp_path))
    paths = [
        store.items(part.region, part.time),
        store.items_snapshot(part.region, part.time),
        store.stack(part.region, part.time),
        store.screen(part.region, part.time),
        store.embeddings(part.region, part.time),
        store.change_maps(part.region, part.time),
    ]
    assert [p.relative_to(tmp_path.resolve()).as_posix() for p in paths] == [
        "items/lombardy/2024-04-01.json",
        "items/lombardy/2024-04-01.parquet",
        "stacks/lombardy/2024-04-01.zarr",
        "screens/lombardy/2024-04-01.csv",
        "embeddings/lombardy/2024-04-01.zarr",
        "change_maps/lombardy/2024-04-01",
    ]


def test_schedule_requests_the_newest_time_partition_of_every_region() -> None:
    context = dg.build_schedule_context(
        repository_def=defs.get_repository_def(),
        scheduled_execution_time=dt.datetime(2024, 10, 2, 3),
    )
    requests = list(dataset_refresh.evaluate_tick(context).run_requests or [])
    assert sorted(r.partition_key for r in requests) == ["beauce|2024-07-01", "lombardy|2024-07-01"]


def test_demo_config_regions_match_the_demo_world(tmp_path) -> None:
    """The embedded config searches exactly where the demo world's regions are."""
    manifest = generate_demo_world(tmp_path / "world", DEFAULT_SPEC)
    config = load_config()
    for region in manifest["regions"]:
        np.testing.assert_allclose(config.region(region["name"]).bbox, region["bbox"], atol=1e-4)
