"""Which found items the pipeline can use, and why the others are skipped.

A search returns whatever the server holds, and real catalogues hold items that cannot be read
onto a grid: Landsat scenes next to Sentinel-2 in a multi-collection search, items without
projection metadata, items whose band assets were never published. Each such item is skipped
with its reason, logged and counted, instead of failing the whole region later on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pipelines.bands import SCL, SPECTRAL_BANDS, asset_key
from pipelines.coregistration import CoregistrationError, item_epsg, reflectance_offset

log = logging.getLogger(__name__)

REQUIRED_BANDS_DEFAULT: tuple[str, ...] = (*(b.name for b in SPECTRAL_BANDS), SCL.name)


@dataclass(frozen=True)
class SkippedItem:
    """An item left out of a region, and the reason in words."""

    item_id: str
    reason: str


def unusable_reason(item: dict, bands: Sequence[str] = REQUIRED_BANDS_DEFAULT) -> str | None:
    """Why this item cannot be co-registered (missing bands, projection or baseline), or None."""
    problems = []
    missing = []
    for name in bands:
        try:
            asset_key(item, name)
        except KeyError:
            missing.append(name)
    if missing:
        problems.append(f"no asset for bands {', '.join(missing)}")
    for check in (item_epsg, reflectance_offset):
        try:
            check(item)
        except (CoregistrationError, KeyError, ValueError) as err:
            problems.append(str(err).removeprefix(f"item {item.get('id')} "))
    return "; ".join(problems) or None


def split_usable(
    items: Sequence[dict], bands: Sequence[str] = REQUIRED_BANDS_DEFAULT
) -> tuple[list[dict], list[SkippedItem]]:
    """Items the pipeline can read, and the skipped ones with their reasons (each logged)."""
    usable, skipped = [], []
    for item in items:
        reason = unusable_reason(item, bands)
        if reason is None:
            usable.append(item)
        else:
            log.warning("skipping STAC item %s: %s", item.get("id"), reason)
            skipped.append(SkippedItem(str(item.get("id")), reason))
    return usable, skipped
