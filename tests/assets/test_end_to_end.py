"""The whole chain on the tiny demo world, as a user runs it: `make demo`'s runner and
`dagster job execute`, in a temporary directory, with a fresh Dagster instance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import rioxarray

from pipelines.stack_store import open_stack
from tests.assets.demo_chain import run_in, tiny_config

# A whole chain, a server or a cluster: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.slow


def test_demo_names_its_report_last(demo_run) -> None:
    tmp, _, stdout = demo_run
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("report: ")
    report = json.loads(Path(last.removeprefix("report: ")).read_text())
    results = report["results"]["demo_world"]
    assert set(results) == {"matter", "untrained", "cva"}
    for method in results.values():
        assert 0.0 <= method["micro"]["f1"] <= 1.0
        assert method["micro"]["tp"] + method["micro"]["fn"] > 0  # the planted changes count
        assert len(method["per_pair"]) == 4  # 2 regions x 2 quarters


def test_every_stage_wrote_its_output(demo_run) -> None:
    tmp, _, _ = demo_run
    data = tmp / "data"
    assert len(list((data / "items").glob("*/*.json"))) == 4
    assert len(list((data / "stacks").glob("*/*.zarr"))) == 4
    assert len(list((data / "screens").glob("*/*.csv"))) == 4
    shards = [p.name for p in (data / "patches" / "shards").iterdir()]
    assert sorted(shards) == [
        "beauce__2024-04-01",
        "beauce__2024-07-01",
        "lombardy__2024-04-01",
        "lombardy__2024-07-01",
    ]
    assert (data / "models" / "matter" / "checkpoint.pt").exists()
    assert (data / "models" / "matter" / "loss_curve.png").exists()
    assert (data / "models" / "matter" / "export" / "model_card.json").exists()


def test_dagster_job_execute_runs_one_partition_of_the_chain(demo_run) -> None:
    tmp, config, _ = demo_run
    dagster = str(Path(sys.executable).with_name("dagster"))
    result = run_in(
        [
            dagster,
            "job",
            "execute",
            "-m",
            "assets.definitions",
            "-j",
            "matter_chain",
            "--tags",
            json.dumps({"dagster/partition": "lombardy|2024-07-01"}),
        ],
        config,
        tmp,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RUN_SUCCESS" in result.stdout + result.stderr


def test_an_empty_search_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, time_windows={"start": "2023-01-01", "end": "2023-04-01"})
    result = run_in([sys.executable, "-m", "assets.demo"], config, tmp_path)
    assert result.returncode == 1
    assert "no sentinel-2-l2a items over bbox" in result.stdout + result.stderr
    assert not (tmp_path / "data" / "items").exists()


def test_change_maps_are_cogs_on_each_stack_grid(demo_run) -> None:
    data = demo_run[0] / "data"
    stacks = sorted((data / "stacks").glob("*/*.zarr"))
    assert len(list((data / "embeddings").glob("*/*.zarr"))) == len(stacks) == 4
    for path in stacks:
        stack = open_stack(path)
        maps = data / "change_maps" / path.parent.name / path.stem
        cogs = sorted(maps.glob("*.tif"))
        assert len(cogs) == 2 * (stack.sizes["time"] - 1) > 0  # a score and a mask per pair
        assert (maps / "preview.png").exists()
        for cog in cogs:
            raster = rioxarray.open_rasterio(cog)
            assert raster.rio.crs.to_string() == stack.attrs["crs"]
            assert tuple(raster.rio.transform())[:6] == tuple(stack.attrs["transform"])
            assert raster.shape[-2:] == (stack.sizes["y"], stack.sizes["x"])
