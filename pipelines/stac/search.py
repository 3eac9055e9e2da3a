"""Search a STAC API for Sentinel-2 L2A items of one region and time window.

Filters that the server implements (CQL2 ``filter``) are sent to it; every filter is also
applied on the client, because some servers (``rustac serve`` among them) answer an unknown
filter with HTTP 200 and no items instead of an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pystac_client
import requests
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry


class StacSearchError(RuntimeError):
    """A search that cannot give a trustworthy answer; the message says what to fix."""


class EmptySearchError(StacSearchError):
    """The API answered, but no item matches: a fact about the archive, not an outage."""


@dataclass(frozen=True)
class SearchRequest:
    """One STAC search: where, what, when."""

    url: str
    collection: str
    bbox: tuple[float, float, float, float]
    start: str
    end: str
    max_cloud_cover: float = 100.0
    mgrs_tiles: tuple[str, ...] = ()
    page_size: int = 100
    max_retries: int = 3
    timeout_s: float = 30.0
    headers: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Reject an inverted or out-of-range bbox and a datetime range in the wrong order."""
        if len(self.bbox) != 4:
            raise StacSearchError(
                f"bbox must be [min_lon, min_lat, max_lon, max_lat], got {self.bbox}"
            )
        min_lon, min_lat, max_lon, max_lat = self.bbox
        if not (min_lon < max_lon and min_lat < max_lat):
            raise StacSearchError(
                f"bbox {list(self.bbox)} is inverted or empty: write it as "
                "[min_lon, min_lat, max_lon, max_lat] with min < max"
            )
        if not (
            -180 <= min_lon <= 180
            and -180 <= max_lon <= 180
            and -90 <= min_lat <= 90
            and -90 <= max_lat <= 90
        ):
            raise StacSearchError(
                f"bbox {list(self.bbox)} is outside lon [-180, 180] / lat [-90, 90]: it must be in "
                "WGS84 degrees, not projected metres"
            )
        try:
            start, end = datetime.fromisoformat(self.start), datetime.fromisoformat(self.end)
        except ValueError as err:
            raise StacSearchError(
                f"datetime range {self.start!r}..{self.end!r} is not ISO 8601: {err}"
            ) from None
        if start >= end:
            raise StacSearchError(
                f"datetime range {self.start}..{self.end} is in the wrong order: the start must "
                "come before the end"
            )
        if not 0 <= self.max_cloud_cover <= 100:
            raise StacSearchError(f"max_cloud_cover {self.max_cloud_cover} must be a % in 0..100")

    @property
    def datetime_range(self) -> str:
        return f"{_rfc3339(self.start)}/{_rfc3339(self.end)}"

    def cql2_filter(self) -> dict:
        """The filters as CQL2-JSON, for servers that conform to the filter extension."""
        args: list[dict] = [
            {"op": "<=", "args": [{"property": "eo:cloud_cover"}, self.max_cloud_cover]}
        ]
        if self.mgrs_tiles:
            args.append(
                {
                    "op": "in",
                    "args": [{"property": "grid:code"}, [f"MGRS-{t}" for t in self.mgrs_tiles]],
                }
            )
        return {"op": "and", "args": args} if len(args) > 1 else args[0]

    def keeps(self, item: dict) -> bool:
        """The client-side twin of :meth:`cql2_filter`."""
        props = item.get("properties", {})
        cloud = props.get("eo:cloud_cover")
        if cloud is None or cloud > self.max_cloud_cover:
            return False
        return not self.mgrs_tiles or props.get("grid:code") in {
            f"MGRS-{t}" for t in self.mgrs_tiles
        }


def _rfc3339(value: str) -> str:
    parsed = datetime.fromisoformat(value)
    return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")


def open_client(request: SearchRequest) -> pystac_client.Client:
    """Open the API (reads its landing page and conformance), with retries on 429 and 5xx."""
    retry = Retry(
        total=request.max_retries,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
    )
    stac_io = StacApiIO(headers=request.headers, max_retries=retry, timeout=request.timeout_s)
    try:
        return pystac_client.Client.open(request.url, stac_io=stac_io, timeout=request.timeout_s)
    except (requests.ConnectionError, requests.Timeout, APIError) as err:
        raise StacSearchError(
            f"the STAC API at {request.url} does not answer ({type(err).__name__}: {err}). "
            "Check the endpoint URL in the config, your network, or start the local server."
        ) from None


def search_items(request: SearchRequest) -> list[dict]:
    """Raw item dicts (not pystac Items, which rewrite ``proj:epsg``) matching the request.

    Sorted by datetime then id, so a rerun sees the same order. Raises StacSearchError for bad
    input, an unknown collection, an unreachable server, or an empty result.
    """
    request.validate()
    client = open_client(request)
    collection_ids = _collection_ids(client, request)
    if request.collection not in collection_ids:
        raise StacSearchError(
            f"unknown collection {request.collection!r} at {request.url}; it serves "
            f"{sorted(collection_ids)}. Set `collection` in the config to one of them."
        )
    server_filters = client.conforms_to(ConformanceClasses.FILTER)
    search = client.search(
        method="POST",
        collections=[request.collection],
        bbox=list(request.bbox),
        datetime=request.datetime_range,
        limit=request.page_size,
        **({"filter": request.cql2_filter(), "filter_lang": "cql2-json"} if server_filters else {}),
    )
    try:
        items = [item for item in search.items_as_dicts() if request.keeps(item)]
    except (requests.ConnectionError, requests.Timeout, APIError) as err:
        raise StacSearchError(f"search at {request.url} failed: {err}") from None
    if not items:
        raise EmptySearchError(
            f"no {request.collection} items over bbox {list(request.bbox)} between "
            f"{request.start} and {request.end} with eo:cloud_cover <= "
            f"{request.max_cloud_cover}%"
            + (f" in MGRS tiles {list(request.mgrs_tiles)}" if request.mgrs_tiles else "")
            + ". Widen the time window, raise the cloud limit, or check the region's bbox."
        )
    return sorted(items, key=lambda it: (it["properties"]["datetime"], it["id"]))


def _collection_ids(client: pystac_client.Client, request: SearchRequest) -> set[str]:
    try:
        return {c.id for c in client.get_collections()}
    except (requests.ConnectionError, requests.Timeout, APIError) as err:
        raise StacSearchError(f"cannot list collections at {request.url}: {err}") from None
