"""The dagster-dask executor: `patch_dataset` for one tiny-world partition on a Dask
LocalCluster (docker/dask/local.yaml), as an operator runs it with MATTER_EXECUTOR=dask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster_dask import dask_executor

from tests.assets.demo_chain import tiny_config
from tests.deploy.code_location import REPO

# A whole chain, a server or a cluster: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.slow

DASK = REPO / "docker" / "dask"
DATASET_ASSETS = ["stac_items", "coregistered_stack", "change_screen", "patch_triplets"]
PARTITION = "lombardy|2024-07-01"


def test_patch_dataset_runs_one_partition_on_a_dask_local_cluster(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "MATTER_CONFIG": str(config),
        "MATTER_EXECUTOR": "dask",
        "DAGSTER_HOME": str(home),
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "job",
            "execute",
            "-m",
            "assets.definitions",
            "-j",
            "patch_dataset",
            "-c",
            str(DASK / "local.yaml"),
            "--tags",
            json.dumps({"dagster/partition": PARTITION}),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.run_config["execution"]["config"]["cluster"]["local"]["n_workers"] == 2
        assert run.tags["dagster/partition"] == PARTITION
        for asset in DATASET_ASSETS:
            records = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
            assert [r.asset_materialization.partition for r in records] == [PARTITION], asset
    shard = tmp_path / "data" / "patches" / "shards" / "lombardy__2024-07-01"
    assert shard.is_dir()


def test_existing_scheduler_run_config_validates_against_the_dask_executor() -> None:
    for name in ("local.yaml", "scheduler.yaml"):
        run_config = yaml.safe_load((DASK / name).read_text())
        checked = validate_config(
            dask_executor.config_schema.config_type, run_config["execution"]["config"]
        )
        assert checked.success, (name, checked.errors)
