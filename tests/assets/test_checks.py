"""Asset checks: they pass on the demo world, a failing one blocks the stages after it, and each
catches the fault it names."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import zarr

from assets import checks, imagery, patches
from assets.checks import JUDGES, bad_patches, residual_shifts
from assets.dask_resource import DaskCluster
from assets.partitions import CONFIG, RegionTime
from assets.resources import DataStore, StacApi
from matter_model.patch_store import ROLES, read_info, read_shard, write_shard
from tests.pipelines.stacks import synthetic_stack

PARTITION = "lombardy|2024-07-01"


def _materialise(root: Path) -> dg.ExecuteInProcessResult:
    """The dataset assets of one partition of the default demo world, with their checks."""
    return dg.materialize(
        [
            *dg.load_assets_from_modules([imagery, patches]),
            *dg.load_asset_checks_from_modules([checks]),
        ],
        partition_key=PARTITION,
        resources={
            "store": DataStore(root=str(root)),
            "stac": StacApi(demo_world_root=str(root / "demo_world")),
            "dask_cluster": DaskCluster(),
        },
        raise_on_error=False,
    )


def test_every_check_passes_on_the_demo_world_and_catches_a_tampered_shard(
    tmp_path: Path,
) -> None:
    result = _materialise(tmp_path)
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {
        "cloud_free_fraction",
        "coregistration_residual",
        "unchanged_share",
        "patches_finite_and_not_empty",
        "patch_count_matches_windows",
    }
    failed = {name: e.description for name, e in evaluations.items() if not e.passed}
    assert not failed
    residual = evaluations["coregistration_residual"].metadata["max_residual_px"].value
    assert residual < 0.2  # the demo world's planted shifts are corrected to within 0.1 px

    # A shard that lost its last triplet and holds a flat patch: both patch checks see it.
    store, shard_id = tmp_path / "patches", "lombardy__2024-07-01"
    arrays = read_shard(store, shard_id)
    arrays = {role: arrays[role][:-1] for role in ROLES}
    arrays["negative"][0] = 0.5
    table = pd.read_csv(store / "shards" / shard_id / "patches.csv").iloc[:-1]
    write_shard(store, shard_id, read_info(store), **arrays, patches=table)
    part = RegionTime("lombardy", "2024-07-01", datetime(2024, 7, 1), datetime(2024, 10, 1))
    data = DataStore(root=str(tmp_path))
    count = JUDGES["patch_count_matches_windows"](data, part)
    assert not count.passed
    assert count.metadata["written"].value == count.metadata["predicted"].value - 1
    patches_check = JUDGES["patches_finite_and_not_empty"](data, part)
    assert not patches_check.passed
    assert patches_check.metadata["flat_patches"].value == {
        "anchor": 0,
        "positive": 0,
        "negative": 1,
    }


def test_a_failing_check_blocks_the_stages_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the range a file may hold (a fraction), so that the check cannot pass.
    unreachable = CONFIG.checks.model_copy(update={"min_cloud_free_fraction": 1.01})
    monkeypatch.setattr(checks, "CONFIG", CONFIG.model_copy(update={"checks": unreachable}))
    result = _materialise(tmp_path)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["cloud_free_fraction"].passed
    assert "threshold 101%" in evaluations["cloud_free_fraction"].description
    materialised = {m.asset_key.path[-1] for m in result.get_asset_materialization_events()}
    assert materialised == {"stac_items", "coregistered_stack"}
    assert not (tmp_path / "patches").exists()


def test_bad_patches_finds_nan_and_flat_patches(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "shard", mode="w", zarr_format=3)
    rng = np.random.default_rng(0)
    for role in ("anchor", "positive", "negative"):
        group.create_array(role, data=rng.random((300, 2, 4, 4), dtype=np.float32))
    group["positive"][5] = np.nan
    group["negative"][260] = 0.0
    assert bad_patches(group) == {
        "non_finite": {"anchor": 0, "positive": 1, "negative": 0},
        "flat": {"anchor": 0, "positive": 0, "negative": 1},
    }


def test_a_date_left_shifted_shows_as_residual() -> None:
    stack = synthetic_stack(size=128, dates=3, changed=None)
    stack.attrs["reference_date"] = "2024-05-15"
    assert max(r for r in residual_shifts(stack, band="B08").values() if r is not None) < 0.1
    stack["reflectance"][2] = np.roll(stack["reflectance"].values[2], 1, axis=-1)
    residuals = residual_shifts(stack, band="B08")
    assert residuals["2024-05-15"] is None  # the reference itself
    assert residuals["2024-05-20"] == pytest.approx(1.0, abs=0.1)
