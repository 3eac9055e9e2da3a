"""The project configuration: regions, endpoint, time windows and stage settings, from YAML.

``MATTER_CONFIG`` names the file; without it the embedded demo configuration is used. Regions
and time windows define the partitions, so adding a region is an edit of this file only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
ENDPOINTS = {
    "earth-search": "https://earth-search.aws.element84.com/v1",
    # Its asset hrefs are signed at search time and re-signed before each read (stac/signing.py).
    "planetary-computer": "https://planetarycomputer.microsoft.com/api/stac/v1",
}


class ConfigError(ValueError):
    """The project configuration is malformed; the message names the key and the fix."""


@dataclass(frozen=True)
class Region:
    """A named area of interest: lon/lat bbox and, optionally, the MGRS tiles to keep."""

    name: str
    bbox: tuple[float, float, float, float]
    mgrs_tiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProjectConfig:
    """The parsed configuration; each section is a plain dict of that stage's settings."""

    path: Path
    regions: tuple[Region, ...]
    stac: dict[str, Any]
    time_windows: dict[str, Any]
    grid: dict[str, Any] = field(default_factory=dict)
    screen: dict[str, Any] = field(default_factory=dict)
    tiling: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    sensor: dict[str, Any] = field(default_factory=dict)
    dask: dict[str, Any] = field(default_factory=dict)

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise ConfigError(
            f"region {name!r} is not in {self.path}; known: {[r.name for r in self.regions]}"
        )


def parse_config(raw: dict[str, Any], path: Path) -> ProjectConfig:
    """Validate a configuration mapping (see ``assets/demo.yaml`` for every key)."""
    for key in ("stac", "time_windows", "regions"):
        if key not in raw:
            raise ConfigError(f"{path}: missing section `{key}` (see assets/demo.yaml)")
    regions = []
    for entry in raw["regions"]:
        name, bbox = entry.get("name"), entry.get("bbox")
        if not name or not isinstance(bbox, list) or len(bbox) != 4:
            raise ConfigError(
                f"{path}: each region needs `name` and `bbox: [min_lon, min_lat, max_lon, "
                f"max_lat]`; got {entry}"
            )
        if "|" in name or "," in name:
            raise ConfigError(f"{path}: region name {name!r} must not contain '|' or ','")
        regions.append(
            Region(name, tuple(float(v) for v in bbox), tuple(entry.get("mgrs_tiles", ())))
        )
    if len({r.name for r in regions}) != len(regions):
        raise ConfigError(f"{path}: region names must be unique")
    sections = {
        k: raw.get(k, {}) or {}
        for k in (
            "stac",
            "time_windows",
            "grid",
            "screen",
            "tiling",
            "training",
            "evaluation",
            "storage",
            "checks",
            "sensor",
            "dask",
        )
    }
    return ProjectConfig(path=path, regions=tuple(regions), **sections)


@cache
def load_config(path: str | None = None) -> ProjectConfig:
    """Load ``path``, else ``$MATTER_CONFIG``, else the embedded demo configuration."""
    chosen = Path(path or os.environ.get("MATTER_CONFIG") or DEMO_CONFIG)
    if not chosen.exists():
        raise ConfigError(f"MATTER_CONFIG points at {chosen}, which does not exist")
    return parse_config(yaml.safe_load(chosen.read_text()), chosen)


def endpoint_url(endpoint: str) -> str:
    """A STAC API URL from a provider name or a URL."""
    return ENDPOINTS.get(endpoint, endpoint)
