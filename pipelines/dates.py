"""Acquisition dates as ISO strings (``YYYY-MM-DD``): how stacks, STAC items and patch tables
name a date."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xarray as xr


def stack_dates(stack: xr.Dataset) -> list[str]:
    """The ISO date of each time step of a stack, in its order."""
    return [str(t)[:10] for t in stack["time"].values.astype("datetime64[D]")]


def item_date(item: Mapping[str, Any]) -> str:
    """The ISO date of a STAC item's acquisition (the day of its ``datetime`` property)."""
    return str(item["properties"]["datetime"])[:10]
