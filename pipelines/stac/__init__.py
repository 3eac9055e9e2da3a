"""STAC: searching Sentinel-2 L2A items, and serving a local collection through a real STAC API."""

from pipelines.stac.search import EmptySearchError, SearchRequest, StacSearchError, search_items
from pipelines.stac.server import StacServer

__all__ = ["EmptySearchError", "SearchRequest", "StacSearchError", "StacServer", "search_items"]
