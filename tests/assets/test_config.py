"""The project configuration: every example file loads, defaults live in the models, and each
malformed input is refused with a message naming the section, the key and the fix."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from assets import model
from assets.config import ConfigError, ProjectConfig, load_config, parse_config
from assets.resources import DataStore
from matter_model.train import _parse as parse_training_command
from matter_model.train import load_config as load_training_config

REPO = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((REPO / "assets" / "demo.yaml").read_text())


def example_configs() -> list[Path]:
    """Every YAML file of the repository that is a project configuration (it lists regions)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "*.yaml", "*.yml"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        files = [REPO / name for name in listed]
    except (OSError, subprocess.CalledProcessError):  # not a checkout: the tracked folders
        files = [p for d in ("assets", "docker", "docs") for p in (REPO / d).rglob("*.y*ml")]
    return sorted(p for p in files if "regions" in (yaml.safe_load(p.read_text()) or {}))


def parse(**changes: object) -> ProjectConfig:
    """The demo configuration with sections replaced or updated by ``changes``."""
    raw = copy.deepcopy(DEMO)
    for section, value in changes.items():
        raw[section] = {**raw.get(section, {}), **value} if isinstance(value, dict) else value
    return parse_config(raw, Path("cfg.yaml"))


def test_the_examples_are_found() -> None:
    found = {p.relative_to(REPO).as_posix() for p in example_configs()}
    assert {"assets/demo.yaml", "docker/matter.yaml"} <= found


@pytest.mark.parametrize("path", example_configs(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_example_configuration_loads(path: Path) -> None:
    config = load_config(str(path))
    assert config.path == path and config.regions
    # Their training settings are the trainer's: the named config and every override load.
    name = config.training.config
    load_training_config(REPO / "matter_model" / "configs" / f"{name}.yaml")


def test_defaults_fill_what_a_file_leaves_out() -> None:
    config = parse_config(
        {
            "stac": {},
            "time_windows": {"start": "2024-01-01"},
            "regions": [{"name": "a", "bbox": [0, 0, 1, 1]}],
            "screen": None,
        },
        Path("cfg.yaml"),
    )
    assert config.stac.endpoint == "demo" and config.stac.max_cloud_cover == 100
    assert config.stac.replay is False
    assert config.screen.threshold == DEMO["screen"]["threshold"] == 0.5
    assert config.time_windows.months == 3 and config.time_windows.end is None
    assert config.tiling.bands == tuple(DEMO["tiling"]["bands"])
    assert config.checks.unchanged_share == (0.02, 0.98)
    assert config.storage.root == ".demo/data" and config.training.overrides == {}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"screen": {"treshold": 0.5}}, r"screen: unknown key `treshold`; did you mean `threshol"),
        ({"tiling": {"seeds": 1}}, r"tiling: unknown key `seeds`; did you mean `seed`"),
        ({"sensor": {"zzz": 1}}, r"sensor: unknown key `zzz`\. Valid keys: \['interval_s'"),
        ({"screnn": {}}, r"\(top level\): unknown key `screnn`; did you mean `screen`"),
        ({"regions": [{"name": "../../escape", "bbox": [0, 0, 1, 1]}]}, "must be a slug"),
        ({"regions": [{"name": "a/b", "bbox": [0, 0, 1, 1]}]}, "must be a slug"),
        ({"regions": [{"name": "a|b", "bbox": [0, 0, 1, 1]}]}, "must be a slug"),
        ({"regions": [{"name": "", "bbox": [0, 0, 1, 1]}]}, "must be a slug"),
        ({"regions": [{"name": "a"}]}, r"regions\['a'\]\.bbox: missing"),
        (
            {"regions": [{"name": "inv", "bbox": [1, 0, 0, 1]}]},
            r"regions\['inv'\]\.bbox: bbox \[1\.0, 0\.0, 0\.0, 1\.0\] must be .*min_lon < max_lon",
        ),
        ({"regions": [{"name": "a", "bbox": [0, 1, 1, 0]}]}, "min_lat < max_lat"),
        (
            {"regions": [{"name": "far", "bbox": [199, 0, 200, 1]}]},
            r"regions\['far'\]\.bbox: .*longitudes must lie in \[-180, 180\]",
        ),
        ({"regions": [{"name": "a", "bbox": [0, -91, 1, 1]}]}, r"latitudes must lie in \[-90, 90"),
        ({"regions": [{"name": "a", "bbox": [0, 0, 1, 1]}] * 2}, "region names must be unique"),
        ({"regions": []}, "regions: list at least one region"),
        ({"screen": {"threshold": 0}}, r"screen\.threshold: .*greater than 0"),
        ({"screen": {"quantile": 1.5}}, r"screen\.quantile: .*less than or equal to 1"),
        ({"tiling": {"min_valid_fraction": -0.1}}, r"tiling\.min_valid_fraction: .*>= 0|greater"),
        ({"checks": {"unchanged_share": [0.9, 0.1]}}, r"checks\.unchanged_share: .*low <= high"),
        ({"tiling": {"negatives": "elsewhere"}}, r"tiling\.negatives: .*'same_scene'"),
        ({"tiling": {"codec": "gzip"}}, r"tiling\.codec: .*unknown codec 'gzip'; choose one of"),
        ({"time_windows": {"months": 13}}, r"time_windows\.months: .*less than or equal to 12"),
        ({"time_windows": {"months": 5}}, r"time_windows: months must divide 12"),
        (
            {"time_windows": {"start": "2024-10-01", "end": "2024-04-01"}},
            r"time_windows: end 2024-04-01 must come after start 2024-10-01",
        ),
        ({"time_windows": {"start": "April"}}, r"time_windows\.start: .*date"),
        ({"stac": {"max_cloud_cover": 120}}, r"stac\.max_cloud_cover: .*100"),
        (
            {"stac": {"asset_hosts": ["https://x.org"]}},
            r"stac\.asset_hosts: asset host .*host name",
        ),
        ({"stac": {"replay": "on"}}, r"stac\.replay: Input should be a valid boolean"),
        ({"stac": {"replay": 1}}, r"stac\.replay: Input should be a valid boolean"),
        ({"training": {"launcher": "slurm"}}, r"training\.launcher: .*'subprocess'"),
        (
            {"training": {"overrides": {"temprature": 0.1}}},
            r"training\.overrides: `temprature` is not a key of the trainer's configuration; "
            r"did you mean `temperature`",
        ),
        (
            {"training": {"overrides": {"model": {"nrom": "group"}}}},
            r"`model\.nrom` .*did you mean `model\.norm`",
        ),
    ],
)
def test_bad_config_is_refused_by_name(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^cfg\.yaml: .*{message}"):
        parse(**changes)


def test_missing_sections_are_named() -> None:
    with pytest.raises(ConfigError, match=r"regions: missing: add it"):
        parse_config({"stac": {}, "time_windows": {"start": "2024-01-01"}}, Path("cfg.yaml"))
    with pytest.raises(ConfigError, match="a mapping of sections"):
        parse_config(["stac"], Path("cfg.yaml"))  # type: ignore[arg-type]


def test_overrides_reach_the_trainer_as_set_even_without_a_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = {
        "temperature": 0.05,  # no flag of its own: `--temperature` failed the step before
        "resume": True,
        "lr": 1e-5,
        "model": {"norm": "group"},
        "augment.shift_px": 2,
        "bands": ["B02", "B03", "B04"],
    }
    config = parse(training={"overrides": overrides})
    monkeypatch.setattr(model, "CONFIG", config)
    command = model.training_command(DataStore(root=str(tmp_path)))
    assert command[command.index("--set") :] == [
        "--set", "temperature=0.05",
        "--set", "resume=true",
        "--set", "lr=1.0e-05",
        "--set", "model.norm=group",
        "--set", "augment.shift_px=2",
        "--set", "bands=[B02, B03, B04]",
    ]  # fmt: skip
    trainer = parse_training_command(command[3:])  # after `python -m matter_model.train`
    assert trainer["temperature"] == 0.05 and trainer["resume"] is True and trainer["lr"] == 1e-5
    assert trainer["model"]["norm"] == "group" and trainer["augment"]["shift_px"] == 2
    assert trainer["bands"] == ["B02", "B03", "B04"]
    assert trainer["out"] == str(tmp_path / "models" / "matter" / "training")


def test_the_store_refuses_paths_outside_its_root(tmp_path: Path) -> None:
    store = DataStore(root=str(tmp_path / "data"))
    assert store.items("beauce", "2024-04-01") == tmp_path / "data/items/beauce/2024-04-01.json"
    with pytest.raises(ValueError, match=r"outside the data store .*storage\.root"):
        store.items("../../escape", "2024-04-01")
    with pytest.raises(ValueError, match="outside the data store"):
        store.path("/etc")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside the data store"):
        store.path("link", "x")
