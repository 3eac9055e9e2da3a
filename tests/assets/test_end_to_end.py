"""The whole chain on the tiny demo world, as a user runs it: `make demo`'s runner and
`dagster job execute`, in a temporary directory, with a fresh Dagster instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.demo_world import TINY_SPEC, generate_demo_world

REPO = Path(__file__).resolve().parents[2]


def _config(tmp: Path, **changes) -> Path:
    """A project config over the tiny demo world, written to ``tmp/config.yaml``."""
    manifest = generate_demo_world(tmp / "data" / "demo_world", TINY_SPEC)
    config = yaml.safe_load((REPO / "assets" / "demo.yaml").read_text())
    config["stac"]["demo_world_spec"] = "tiny"
    config["regions"] = [{"name": r["name"], "bbox": r["bbox"]} for r in manifest["regions"]]
    config["storage"]["root"] = str(tmp / "data")
    config["training"]["overrides"] = {
        "steps": 3,
        "batch_size": 4,
        "num_workers": 0,
        "checkpoint_every": 2,
    }
    config["evaluation"]["oscd_root"] = None
    for section, values in changes.items():
        config[section] = (
            {**config.get(section, {}), **values} if isinstance(values, dict) else values
        )
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(args: list[str], config: Path, tmp: Path) -> subprocess.CompletedProcess:
    home = tmp / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "MATTER_CONFIG": str(config), "DAGSTER_HOME": str(home)}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _rustac_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "rustac serve" in line]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("e2e")
    config = _config(tmp)
    before = _rustac_processes()
    result = _run([sys.executable, "-m", "assets.demo"], config, tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _rustac_processes() == before, "the STAC server outlived the run"
    return tmp, config, result.stdout


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


def test_dagster_job_execute_runs_one_partition_of_the_chain(demo_run) -> None:
    tmp, config, _ = demo_run
    dagster = str(Path(sys.executable).with_name("dagster"))
    result = _run(
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
    config = _config(tmp_path, time_windows={"start": "2023-01-01", "end": "2023-04-01"})
    result = _run([sys.executable, "-m", "assets.demo"], config, tmp_path)
    assert result.returncode == 1
    assert "no sentinel-2-l2a items over bbox" in result.stdout + result.stderr
    assert not (tmp_path / "data" / "items").exists()
