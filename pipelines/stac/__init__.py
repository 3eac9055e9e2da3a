"""STAC: searching Sentinel-2 L2A items, reading what an item says about itself, signing Planetary
Computer hrefs, and serving a local collection through a real STAC API."""

from pipelines.stac.items import (
    SkippedItem,
    asset_path,
    item_epsg,
    reflectance_offset,
    scenes_by_date,
    split_usable,
    unusable_reason,
)
from pipelines.stac.search import (
    EmptySearchError,
    SearchRequest,
    StacSearchError,
    item_mgrs_tile,
    search_items,
)
from pipelines.stac.server import StacServer
from pipelines.stac.signing import refresh_signature, resolve_href, sign_href, sign_item

__all__ = [
    "EmptySearchError",
    "SearchRequest",
    "SkippedItem",
    "StacSearchError",
    "StacServer",
    "asset_path",
    "item_epsg",
    "item_mgrs_tile",
    "reflectance_offset",
    "refresh_signature",
    "resolve_href",
    "scenes_by_date",
    "search_items",
    "sign_href",
    "sign_item",
    "split_usable",
    "unusable_reason",
]
