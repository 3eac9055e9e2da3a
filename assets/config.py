"""The project configuration: regions, endpoint, time windows and stage settings, from YAML.

``MATTER_CONFIG`` names the file; without it the embedded demo configuration is used. Regions
and time windows define the partitions, so adding a region is an edit of this file only.

Each section is a pydantic model holding that section's defaults (the only place they are
written); an unknown key, a value out of range or a region name that is not a slug fails when the
code location loads, with a message naming the section, the key and the nearest valid key.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from datetime import date
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from matter_model.bands import MATTER_BANDS
from matter_model.patch_store import check_codec
from pipelines import tiling
from pipelines.coregistration import DEFAULT_CHUNK_PX, DEFAULT_SAMPLE_PX
from pipelines.stac.hrefs import check_host_pattern

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
# The trainer's full key set: `training.overrides` may set any of these, and nothing else.
TRAINER_DEFAULTS = Path(__file__).resolve().parents[1] / "matter_model" / "configs" / "default.yaml"
ENDPOINTS = {
    "earth-search": "https://earth-search.aws.element84.com/v1",
    # Its asset hrefs are signed at search time and re-signed before each read (stac/signing.py).
    "planetary-computer": "https://planetarycomputer.microsoft.com/api/stac/v1",
}
_TILING = tiling.TilingSettings()  # the tiling section's defaults
SLUG = re.compile(r"[A-Za-z0-9_-]+")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
PositiveInt = Annotated[int, Field(gt=0)]


class ConfigError(ValueError):
    """The project configuration is malformed; the message names the key and the fix."""


def nearest_key_hint(key: str, valid: Iterable[str]) -> str:
    """``; did you mean `x`?`` for the valid key closest to ``key``, or nothing."""
    match = difflib.get_close_matches(key, sorted(valid), n=1)
    return f"; did you mean `{match[0]}`?" if match else ""


class Section(BaseModel):
    """A section of the configuration: typed, immutable, unknown keys refused by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields set by the loader, not by the file.
    internal: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, Mapping):
            valid = sorted(set(cls.model_fields) - cls.internal)
            for key in data:
                if key not in valid:
                    hint = nearest_key_hint(str(key), valid) or "."
                    raise ValueError(f"unknown key `{key}`{hint} Valid keys: {valid}")
        return data


class StacSettings(Section):
    endpoint: str = "demo"  # "demo", "earth-search", "planetary-computer" or a STAC API URL
    demo_world_spec: str = "default"  # with endpoint demo: a key of pipelines.demo_world.SPECS
    collection: str = "sentinel-2-l2a"
    max_cloud_cover: Annotated[float, Field(ge=0.0, le=100.0)] = 100.0
    href_rewrites: tuple[tuple[str, str], ...] = ()
    # Hosts asset hrefs may use besides the endpoint's own (pipelines.stac.hrefs): a name or
    # `*.domain`; unset, the endpoint's known asset hosts. Local paths only for a local endpoint.
    asset_hosts: tuple[str, ...] | None = None

    @field_validator("asset_hosts")
    @classmethod
    def _host_patterns(cls, hosts: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return hosts if hosts is None else tuple(check_host_pattern(h) for h in hosts)

    # true: `stac_items` reads each partition's STAC-GeoParquet snapshot instead of searching,
    # and no STAC API is contacted (nor the demo server started)
    replay: StrictBool = False


class TimeWindows(Section):
    start: date
    end: date | None = None  # None: time windows up to today
    months: Annotated[int, Field(ge=1, le=12)] = 3

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindows:
        if 12 % self.months:
            raise ValueError(f"months must divide 12 (1, 2, 3, 4, 6 or 12), got {self.months}")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end} must come after start {self.start}")
        return self


class Region(Section):
    """A named area of interest: lon/lat bbox and, optionally, the MGRS tiles to keep."""

    name: str
    bbox: tuple[float, float, float, float]
    mgrs_tiles: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not SLUG.fullmatch(name):
            raise ValueError(
                f"region name {name!r} must be a slug: letters, digits, '-' and '_' only "
                "(it names partitions and folders of the data store)"
            )
        return name

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, bbox: tuple[float, float, float, float]) -> tuple[float, ...]:
        west, south, east, north = bbox
        if not all(-180.0 <= lon <= 180.0 for lon in (west, east)):
            raise ValueError(f"bbox {list(bbox)}: longitudes must lie in [-180, 180]")
        if not all(-90.0 <= lat <= 90.0 for lat in (south, north)):
            raise ValueError(f"bbox {list(bbox)}: latitudes must lie in [-90, 90]")
        if not (west < east and south < north):
            raise ValueError(
                f"bbox {list(bbox)} must be [min_lon, min_lat, max_lon, max_lat] with "
                "min_lon < max_lon and min_lat < max_lat"
            )
        return bbox


class GridSettings(Section):
    resolution_m: Positive = 10.0
    chunk_px: PositiveInt = DEFAULT_CHUNK_PX  # co-registration block side
    sample_px: PositiveInt = DEFAULT_SAMPLE_PX  # the shift is measured on at most this square


class DaskSettings(Section):
    address: str = ""  # a running scheduler; empty: a LocalCluster per step
    processes: bool = False
    n_workers: PositiveInt = 1
    threads_per_worker: Annotated[int, Field(ge=0)] = 0  # 0: the cores shared among workers
    memory_limit: str = "auto"
    connect_timeout_s: Positive = 30.0


class ScreenSettings(Section):
    window: PositiveInt = 32
    # 0.5, the demo's threshold; pipelines.change_screen.screen_windows alone defaults to 1.2
    threshold: Positive = 0.5
    method: str = "cva"  # a key of pipelines.change_screen.PIXEL_SCORES
    quantile: Fraction = 1.0
    min_valid_fraction: Fraction = 0.9


class TilingSettings(Section):
    """The tiling section: the bands, the negatives' source, and the settings of
    :class:`pipelines.tiling.TilingSettings`, whose defaults these are."""

    bands: tuple[str, ...] = Field(default=MATTER_BANDS, min_length=1)
    min_valid_fraction: Fraction = _TILING.min_valid_fraction
    min_negative_distance_px: Annotated[int, Field(ge=0)] = _TILING.min_negative_distance_px
    max_pairs_per_window: PositiveInt | None = _TILING.max_pairs_per_window  # None: every pair
    strip_rows: PositiveInt | None = _TILING.strip_rows  # None: the whole scene is one strip
    # A key of matter_model.patch_store.CODECS for a new store; None: the normalisation's default
    codec: str | None = _TILING.codec
    negatives: Literal["same_scene", "other_region"] = "same_scene"
    seed: int = _TILING.seed

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, codec: str | None) -> str | None:
        return codec if codec is None else check_codec(codec)


@cache
def trainer_keys() -> frozenset[str]:
    """Every key of the trainer's configuration, nested ones dotted (``model.norm``)."""
    return frozenset(_dotted(yaml.safe_load(TRAINER_DEFAULTS.read_text())))


def _dotted(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):  # an empty one sets nothing
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class TrainingSettings(Section):
    config: str = "demo"  # a name of matter_model/configs/ or a path
    overrides: dict[str, Any] = {}  # trainer keys, dotted or nested: `model.norm: group`
    launcher: Literal["subprocess", "kubernetes"] = "subprocess"
    kubernetes: dict[str, Any] = {}  # checked by assets.k8s.TrainingPod with launcher kubernetes

    @field_validator("overrides", "kubernetes", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("overrides")
    @classmethod
    def _trainer_keys(cls, overrides: Any) -> Any:
        if not isinstance(overrides, Mapping):
            return overrides
        valid = trainer_keys()
        for key in _dotted(overrides):
            if key not in valid:
                raise ValueError(
                    f"`{key}` is not a key of the trainer's configuration"
                    f"{nearest_key_hint(key, valid)} (see matter_model/configs/default.yaml)"
                )
        return overrides

    def override_settings(self) -> list[str]:
        """``key=value`` per override for the trainer's ``--set``: nested keys dotted, each
        value written as YAML that reads back as the same value (``1.0e-05``, ``'yes'``)."""
        return [f"{key}={_yaml_value(value)}" for key, value in _dotted(self.overrides).items()]


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n...\n").strip()


class EvaluationSettings(Section):
    oscd_root: str | None = None  # evaluated when the folder exists
    window: PositiveInt = 13
    sigma: Annotated[float, Field(ge=0.0)] = 1.0
    features: str = "residual"  # matter_model.change_detection.CHANGE_MAP_OUTPUT


class SensorSettings(Section):
    interval_s: PositiveInt = 3600
    lookback_windows: PositiveInt = 2  # complete time partitions searched each tick


class CheckSettings(Section):
    # share of a stack's pixel-dates that are cloud-free (valid); below it the stack is useless
    min_cloud_free_fraction: Fraction = 0.3
    # shift between the reference date and a corrected date, measured again after correction
    max_residual_shift_px: Positive = 0.5
    # share of a region's valid windows kept as unchanged: near 0 or 1 means a broken screen
    unchanged_share: tuple[Fraction, Fraction] = (0.02, 0.98)
    # below this many valid windows a share says little: the range is not enforced
    min_windows_for_share: Annotated[int, Field(ge=0)] = 50
    # dates whose overlap with the reference is under this share are not re-measured
    min_overlap_fraction: Fraction = 0.2
    # side of the central crop the residual is measured on (bounds the cost on full tiles)
    residual_crop_px: PositiveInt = 1024

    @field_validator("unchanged_share")
    @classmethod
    def _ordered(cls, share: tuple[float, float]) -> tuple[float, float]:
        if share[0] > share[1]:
            raise ValueError(f"[low, high] with low <= high, got {list(share)}")
        return share


class StorageSettings(Section):
    root: str = ".demo/data"


class ProjectConfig(Section):
    """The parsed configuration: one typed section per stage, defaults filled in."""

    internal: ClassVar[frozenset[str]] = frozenset({"path"})

    path: Path = DEMO_CONFIG  # the file it was read from
    stac: StacSettings
    time_windows: TimeWindows
    regions: tuple[Region, ...]
    grid: GridSettings = GridSettings()
    dask: DaskSettings = DaskSettings()
    screen: ScreenSettings = ScreenSettings()
    tiling: TilingSettings = TilingSettings()
    training: TrainingSettings = TrainingSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    sensor: SensorSettings = SensorSettings()
    checks: CheckSettings = CheckSettings()
    storage: StorageSettings = StorageSettings()

    @field_validator("regions")
    @classmethod
    def _unique(cls, regions: tuple[Region, ...]) -> tuple[Region, ...]:
        names = [r.name for r in regions]
        if not names:
            raise ValueError("list at least one region (name and bbox)")
        if len(set(names)) != len(names):
            raise ValueError(f"region names must be unique, got {names}")
        return regions

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise ConfigError(
            f"region {name!r} is not in {self.path}; known: {[r.name for r in self.regions]}"
        )


def _where(loc: tuple[int | str, ...], raw: Mapping[str, Any]) -> str:
    """``screen.threshold`` or ``regions[beauce].bbox`` for a pydantic error location."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and loc[:i] == ("regions",):
            entry = (raw.get("regions") or [None] * (part + 1))[part]
            name = entry.get("name") if isinstance(entry, Mapping) else None
            parts[-1] += f"[{name!r}]" if name else f"[{part}]"
        else:
            parts.append(str(part))
    return ".".join(parts) or "(top level)"


def _message(error: Any) -> str:
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"] == "missing":
        return "missing: add it (see assets/demo.yaml)"
    return f"{error['msg']}, got {error.get('input')!r}"


def parse_config(raw: Mapping[str, Any], path: Path) -> ProjectConfig:
    """Validate a configuration mapping (see ``assets/demo.yaml`` for every key)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: a mapping of sections is expected (see assets/demo.yaml)")
    try:
        return ProjectConfig.model_validate(raw).model_copy(update={"path": path})
    except ValidationError as exc:
        problems = [f"{_where(e['loc'], raw)}: {_message(e)}" for e in exc.errors()]
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None


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
