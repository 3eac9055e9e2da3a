"""The co-registration asset on dask.distributed: a LocalCluster per step by default, or a running
scheduler named in the configuration; and the resource's own life cycle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg
import dask
import dask.array as da
import pytest
from distributed import LocalCluster

from assets.dask_resource import DaskCluster
from pipelines.dates import item_date
from pipelines.stac.server import free_port
from pipelines.stack_store import open_stack
from tests.assets.demo_chain import run_in, tiny_config

# A whole chain, a server or a cluster: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.slow

PARTITION = ("lombardy", "2024-04-01", "2024-07-01")


def _materialize_stack(tmp: Path, dask_section: dict) -> tuple[str, Path]:
    """`dagster asset materialize` of one coregistered_stack partition of the tiny demo world,
    with the partition's items written where `stac_items` writes them (searching is tested
    elsewhere). Returns the command's output and the stack's path."""
    config = tiny_config(tmp, dask=dask_section)
    region, start, end = PARTITION
    world = tmp / "data" / "demo_world"
    manifest = json.loads((world / "manifest.json").read_text())
    ids = next(r for r in manifest["regions"] if r["name"] == region)["item_ids"].values()
    items = [
        it
        for it in json.loads((world / "items.json").read_text())["features"]
        if it["id"] in set(ids) and start <= item_date(it) < end
    ]
    assert items, "the tiny world has no scene in the partition's time span"
    path = tmp / "data" / "items" / region / f"{start}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    dagster = str(Path(sys.executable).with_name("dagster"))
    result = run_in(
        [dagster, "asset", "materialize", "-m", "assets.definitions"]
        + ["--select", "coregistered_stack", "--partition", f"{region}|{start}"],
        config,
        tmp,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output, tmp / "data" / "stacks" / region / f"{start}.zarr"


def test_coregistered_stack_on_a_local_cluster(tmp_path: Path) -> None:
    output, path = _materialize_stack(tmp_path, {"address": "", "processes": False})
    assert "dask: LocalCluster of 1 worker(s)" in output
    stack = open_stack(path)
    assert stack.sizes["time"] == 2
    assert stack.valid_fraction.values.min() > 0.3
    assert stack.attrs["region"] == PARTITION[0]


def test_coregistered_stack_joins_a_running_scheduler(tmp_path: Path) -> None:
    """The step submits its blocks to a scheduler started outside it, and leaves it running."""
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",  # a threads-only cluster listens in-process unless told otherwise
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        before = cluster.scheduler.transition_counter
        output, path = _materialize_stack(tmp_path, {"address": cluster.scheduler_address})
        assert f"dask: joined the scheduler at {cluster.scheduler_address}" in output
        assert cluster.scheduler.transition_counter > before  # the blocks ran on this cluster
        assert cluster.status.name == "running"
    assert open_stack(path).sizes["time"] == 2


def test_the_client_is_the_default_scheduler_only_while_in_use() -> None:
    with dg.build_resources({"dask_cluster": DaskCluster(threads_per_worker=1)}) as resources:
        client = resources.dask_cluster.client
        assert dask.config.get("scheduler") == "dask.distributed"
        assert int(da.ones((64, 64), chunks=16).sum().compute()) == 64 * 64
        assert len(client.scheduler_info()["workers"]) == 1
    assert dask.config.get("scheduler", None) != "dask.distributed"
    assert client.status == "closed"


def test_an_unreachable_scheduler_fails_naming_the_setting() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    resource = DaskCluster(address=address, connect_timeout_s=2)
    with (
        pytest.raises(dg.DagsterResourceFunctionError) as failure,
        dg.build_resources({"dask_cluster": resource}),
    ):
        pass
    assert isinstance(failure.value.__cause__, ConnectionError)
    assert f"dask.address={address!r}" in str(failure.value.__cause__)
