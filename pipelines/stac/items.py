"""What a STAC item dict says about itself, and which found items the pipeline can use.

Reading an item: its projection (EPSG code, the item's or a band asset's own), the reflectance
offset of its processing baseline, the href of a band's asset, and its acquisition date.

A search returns whatever the server holds, and real catalogues hold items that cannot be read
onto a grid: Landsat scenes next to Sentinel-2 in a multi-collection search, items without
projection metadata, items whose band assets were never published or carry no href. Each such
item is skipped with its reason, logged and counted, instead of failing the whole region later.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipelines.bands import SCL, SPECTRAL_BANDS, asset_key
from pipelines.dates import item_date
from pipelines.grid import CoregistrationError
from pipelines.stac.hrefs import HrefPolicy
from pipelines.stac.signing import resolve_href

log = logging.getLogger(__name__)

REQUIRED_BANDS_DEFAULT: tuple[str, ...] = (*(b.name for b in SPECTRAL_BANDS), SCL.name)
BASELINE_WITH_OFFSET = (4, 0)  # from processing baseline 04.00 on, DN carry a +1000 offset
BOA_OFFSET = -0.1


def item_epsg(item: dict) -> int:
    """The item's EPSG code from ``proj:epsg`` or ``proj:code`` (pystac 1.15 writes the latter)."""
    props = item["properties"]
    if props.get("proj:epsg"):
        return int(props["proj:epsg"])
    code = props.get("proj:code", "")
    if code.upper().startswith("EPSG:"):
        return int(code.split(":")[1])
    raise CoregistrationError(f"item {item['id']} carries neither proj:epsg nor an EPSG proj:code")


def asset_epsg(item: dict, name: str) -> int:
    """The EPSG code band ``name``'s asset declares: its own ``proj:epsg`` or ``proj:code``
    where the asset carries one (STAC lets an asset override the item), else the item's."""
    asset = item["assets"][asset_key(item, name)]
    if asset.get("proj:epsg") or asset.get("proj:code"):
        return item_epsg({"id": item.get("id"), "properties": asset})
    return item_epsg(item)


def reflectance_offset(item: dict) -> float:
    """The BOA offset to add after scaling, from ``s2:processing_baseline`` (not the flag).

    ``earthsearch:boa_offset_applied`` is wrong on some Earth Search items; the baseline is not.
    """
    baseline = item["properties"].get("s2:processing_baseline")
    if baseline is None:
        raise CoregistrationError(
            f"item {item['id']} has no s2:processing_baseline, so its reflectance offset is "
            "unknown; add the property or use a provider that records it"
        )
    major, minor = (int(part) for part in str(baseline).split(".")[:2])
    return BOA_OFFSET if (major, minor) >= BASELINE_WITH_OFFSET else 0.0


def band_scale(item: dict, name: str) -> float:
    """Band ``name``'s DN-to-reflectance scale from its ``raster:bands`` (L2A's 1e-4 if unset)."""
    raster = (item["assets"][asset_key(item, name)].get("raster:bands") or [{}])[0]
    return float(raster.get("scale", 1e-4))


def band_href(item: dict, name: str, policy: HrefPolicy | None = None) -> str:
    """The raw href of band ``name``'s asset; with a ``policy``, refused if it lies outside."""
    key = asset_key(item, name)
    href = item["assets"][key]["href"]
    if policy is not None:
        policy.check(href, f"asset {key!r} of item {item.get('id')}")
    return href


def asset_path(
    item: dict,
    name: str,
    href_rewrites: Sequence[tuple[str, str]] = (),
    policy: HrefPolicy | None = None,
) -> str:
    """The href of band ``name``'s asset, through :func:`~pipelines.stac.signing.resolve_href`;
    with a ``policy``, an href outside it is refused first (nothing is read)."""
    return resolve_href(band_href(item, name, policy), href_rewrites)


def check_asset_hrefs(
    items: Iterable[dict], policy: HrefPolicy, bands: Sequence[str] = REQUIRED_BANDS_DEFAULT
) -> None:
    """Refuse the items if a band asset the pipeline will read lies outside ``policy``.

    Called where items enter the pipeline, so a bad href fails the step before any read.
    """
    for item in items:
        for name in bands:
            band_href(item, name, policy)


def scenes_by_date(items: Sequence[dict]) -> dict[str, list[dict]]:
    """The items per acquisition date (sorted), the clearest scene (lowest cloud cover) first."""
    by_date: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        by_date[item_date(item)].append(item)
    return {
        date: sorted(by_date[date], key=lambda it: it["properties"].get("eo:cloud_cover", 100))
        for date in sorted(by_date)
    }


@dataclass(frozen=True)
class SkippedItem:
    """An item left out of a region, and the reason in words."""

    item_id: str
    reason: str


def unusable_reason(item: dict, bands: Sequence[str] = REQUIRED_BANDS_DEFAULT) -> str | None:
    """Why this item cannot be co-registered (missing bands, projection or baseline), or None."""
    problems = []
    missing, no_href = [], []
    for name in bands:
        try:
            key = asset_key(item, name)
        except KeyError:
            missing.append(name)
            continue
        if not str(item["assets"][key].get("href") or "").strip():
            no_href.append(name)
    if missing:
        problems.append(f"no asset for bands {', '.join(missing)}")
    if no_href:
        problems.append(f"no href for the assets of bands {', '.join(no_href)}")
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
