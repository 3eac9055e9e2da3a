"""The tiling benchmark's parts cut and write what its end-to-end run does."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def tiling(monkeypatch: pytest.MonkeyPatch):
    """``benchmarks/tiling.py`` on a 7.68 km square: 3 x 3 windows, so that each row has two
    windows far enough apart to be each other's negative."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import tiling

    monkeypatch.setattr(tiling, "EXTENT_M", 7_680)
    yield tiling
    sys.modules.pop("tiling", None)


def test_the_parts_write_the_shards_the_run_writes(tiling, real_data, tmp_path) -> None:
    folder = tmp_path / "cogs"
    tiling.build_test_set(real_data("s2_l2a_cog_29RKH"), folder, dates=2)
    run = tiling.run_ours(folder, 2, tmp_path / "run")
    parts = tiling.run_parts(folder, 2, tmp_path / "parts")
    assert parts["patches"] == run["patches"] == 3 * 2 * 3  # a triplet from 2 windows of 3 rows
    assert 0 < parts["bytes_per_patch"] < parts["raw_bytes_per_patch"]
    for stage in ("planning", "reading", "cutting", "writing", "compressing_one_thread"):
        assert parts[stage]["seconds"] > 0 and parts[stage]["cpu_s"] >= 0
    shards = sorted((tmp_path / "run" / "shards").iterdir())
    assert len(shards) == 3
    for shard in shards:
        twin = tmp_path / "parts" / "shards" / shard.name.replace("benchmark", "parts")
        for role in ("anchor", "positive", "negative"):
            np.testing.assert_array_equal(
                zarr.open_group(shard, mode="r")[role][:], zarr.open_group(twin, mode="r")[role][:]
            )
