"""Partitions of the per-region assets: region x time window, both from the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from assets.config import ProjectConfig, load_config


def time_windows(config: ProjectConfig) -> dg.TimeWindowPartitionsDefinition:
    """Windows of ``months`` months from ``start`` (to ``end``, or to today when absent)."""
    tw = config.time_windows
    months = tw.months  # a divisor of 12, checked with the configuration
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule=f"0 0 1 */{months} *" if months > 1 else "0 0 1 * *",
        start=tw.start.isoformat(),
        end=tw.end.isoformat() if tw.end else None,
        fmt="%Y-%m-%d",
    )


def region_partitions(config: ProjectConfig) -> dg.MultiPartitionsDefinition:
    """Every region crossed with every time window."""
    return dg.MultiPartitionsDefinition(
        {
            "region": dg.StaticPartitionsDefinition([r.name for r in config.regions]),
            "window": time_windows(config),
        }
    )


CONFIG = load_config()
REGION_WINDOWS = region_partitions(CONFIG)


@dataclass(frozen=True)
class RegionWindow:
    """One partition: a region and the [start, end) of its time window."""

    region: str
    window: str
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        return f"{self.region}|{self.window}"

    @property
    def shard_id(self) -> str:
        """The partition's shard in the patch store."""
        return f"{self.region}__{self.window}"


def region_window(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> RegionWindow:
    """The partition an asset (or asset check) run is for."""
    key = REGION_WINDOWS.get_partition_key_from_str(context.partition_key)
    dims = key.keys_by_dimension
    window = REGION_WINDOWS.get_partitions_def_for_dimension("window")
    span = window.time_window_for_partition_key(dims["window"])
    return RegionWindow(dims["region"], dims["window"], span.start, span.end)
