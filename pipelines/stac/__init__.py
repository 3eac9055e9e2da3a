"""STAC: searching Sentinel-2 L2A items, signing Planetary Computer hrefs, and serving a local
collection through a real STAC API. ``pipelines.stac.items`` (usable vs skipped items) is imported
from its module: it depends on ``pipelines.coregistration``, which depends on this package."""

from pipelines.stac.search import (
    EmptySearchError,
    SearchRequest,
    StacSearchError,
    item_mgrs_tile,
    search_items,
)
from pipelines.stac.server import StacServer
from pipelines.stac.signing import refresh_signature, sign_href, sign_item

__all__ = [
    "EmptySearchError",
    "SearchRequest",
    "StacSearchError",
    "StacServer",
    "item_mgrs_tile",
    "refresh_signature",
    "search_items",
    "sign_href",
    "sign_item",
]
