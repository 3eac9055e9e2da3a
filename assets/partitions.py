"""Partitions of the per-region assets: region x time, both from the configuration.

The time dimension is Dagster's time-window partitioning (config ``time_windows``); in this
project's code it is called ``time``, so that "window" always means a square of pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from assets.config import ProjectConfig, load_config


def time_windows(config: ProjectConfig) -> dg.TimeWindowPartitionsDefinition:
    """Dagster time windows of ``months`` months from ``start`` (to ``end``, or to today)."""
    tw = config.time_windows
    months = tw.months  # a divisor of 12, checked with the configuration
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule=f"0 0 1 */{months} *" if months > 1 else "0 0 1 * *",
        start=tw.start.isoformat(),
        end=tw.end.isoformat() if tw.end else None,
        fmt="%Y-%m-%d",
    )


def region_partitions(config: ProjectConfig) -> dg.MultiPartitionsDefinition:
    """Every region crossed with every time span: dimensions "region" and "time".

    Dagster orders a multi-partition's dimensions by name, so a key string is
    ``<region>|<time start>`` (such as ``lombardy|2024-04-01``)."""
    return dg.MultiPartitionsDefinition(
        {
            "region": dg.StaticPartitionsDefinition([r.name for r in config.regions]),
            "time": time_windows(config),
        }
    )


CONFIG = load_config()
REGION_TIMES = region_partitions(CONFIG)


@dataclass(frozen=True)
class RegionTime:
    """One partition: a region and its time span, ``time`` its start key, [start, end)."""

    region: str
    time: str
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        return f"{self.region}|{self.time}"

    @property
    def shard_id(self) -> str:
        """The partition's shard in the patch store."""
        return f"{self.region}__{self.time}"


def region_time(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> RegionTime:
    """The partition an asset (or asset check) run is for."""
    key = REGION_TIMES.get_partition_key_from_str(context.partition_key)
    dims = key.keys_by_dimension
    times = REGION_TIMES.get_partitions_def_for_dimension("time")
    span = times.time_window_for_partition_key(dims["time"])
    return RegionTime(dims["region"], dims["time"], span.start, span.end)
