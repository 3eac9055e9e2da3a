"""Search a STAC API for Sentinel-2 L2A items of one region and time window.

Filters go to the server in the richest form it conforms to: CQL2 ``filter`` (Planetary
Computer), else the ``query`` extension (Earth Search v1 advertises only that), else none. Every
filter is also applied on the client, because servers disagree on what they honour: ``rustac
serve`` answers an unknown filter with HTTP 200 and no items, and Earth Search v1 ignores a CQL2
cloud-cover filter (recorded: scenes over the limit, and Sentinel-1 scenes without cloud cover).

Requests are retried with exponential backoff on HTTP 429 and 5xx, refused connections,
timeouts and answers that break off mid-way (see ``api_io``); an answer that is not JSON and
``next`` links that loop fail with one error naming them. Planetary Computer items come back with
signed asset hrefs (see ``signing``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pystac_client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.item_search import ItemSearch
from urllib3.util.retry import Retry

from pipelines.stac.api_io import BROKEN_BODY, CheckedStacApiIO, InvalidAnswerError
from pipelines.stac.signing import SigningError, is_planetary_computer, sign_item

RETRY_STATUSES = (429, 500, 502, 503, 504)
MGRS_TILE = re.compile(r"^(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z][A-HJ-NP-V])$")


class StacSearchError(RuntimeError):
    """A search that cannot give a trustworthy answer; the message says what to fix."""


class EmptySearchError(StacSearchError):
    """The API answered, but no item matches: a fact about the archive, not an outage."""


@dataclass(frozen=True)
class SearchRequest:
    """One STAC search: where (bbox or a GeoJSON geometry, MGRS tiles), what, when, how clear.

    ``None`` leaves a filter out. ``page_size`` is the server's page ``limit``; ``max_items``
    stops paging after that many items (before the client-side filter).
    """

    url: str
    collections: tuple[str, ...] = ("sentinel-2-l2a",)
    bbox: tuple[float, float, float, float] | None = None
    intersects: dict | None = None
    start: str | None = None
    end: str | None = None
    max_cloud_cover: float | None = None
    mgrs_tiles: tuple[str, ...] = ()
    page_size: int | None = 100
    max_items: int | None = None
    max_retries: int = 3
    retry_backoff_s: float = 0.5
    timeout_s: float = 30.0
    headers: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Reject a bad bbox or geometry, datetimes out of order, and malformed limits or tiles."""
        if self.bbox is not None and self.intersects is not None:
            raise StacSearchError(
                "give either bbox or intersects, not both: STAC item search accepts only one"
            )
        if self.bbox is not None:
            _validate_bbox(self.bbox)
        if self.intersects is not None and not (
            isinstance(self.intersects, dict)
            and "type" in self.intersects
            and "coordinates" in self.intersects
        ):
            raise StacSearchError(
                f"intersects must be a GeoJSON geometry with `type` and `coordinates`, got "
                f"{self.intersects!r}"
            )
        start, end = _parse_time(self.start), _parse_time(self.end)
        if start is not None and end is not None and start >= end:
            raise StacSearchError(
                f"datetime range {self.start}..{self.end} is in the wrong order: the start must "
                "come before the end"
            )
        if self.max_cloud_cover is not None and not 0 <= self.max_cloud_cover <= 100:
            raise StacSearchError(f"max_cloud_cover {self.max_cloud_cover} must be a % in 0..100")
        for name in ("page_size", "max_items"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise StacSearchError(f"{name} must be at least 1 (or unset), got {value}")
        for tile in self.mgrs_tiles:
            normalise_mgrs_tile(tile)

    @property
    def datetime_range(self) -> str | None:
        """The RFC 3339 interval (open ends as ``..``), or None for no time filter."""
        if self.start is None and self.end is None:
            return None
        return "/".join(_rfc3339(v) if v else ".." for v in (self.start, self.end))

    @property
    def tiles(self) -> tuple[str, ...]:
        """The MGRS tiles in canonical form (``32TNS``; ``5VNK`` becomes ``05VNK``)."""
        return tuple(normalise_mgrs_tile(t) for t in self.mgrs_tiles)

    def cql2_filter(self) -> dict | None:
        """The filters as CQL2-JSON, for servers that conform to the filter extension.

        An MGRS tile matches by Planetary Computer's ``s2:mgrs_tile`` or Earth Search's
        ``grid:code``, so one request works on either.
        """
        args: list[dict] = []
        if self.max_cloud_cover is not None:
            cloud = {"property": "eo:cloud_cover"}
            args.append({"op": "<=", "args": [cloud, self.max_cloud_cover]})
        if self.tiles:
            args.append(
                {
                    "op": "or",
                    "args": [
                        {"op": "in", "args": [{"property": "s2:mgrs_tile"}, list(self.tiles)]},
                        {
                            "op": "in",
                            "args": [{"property": "grid:code"}, [f"MGRS-{t}" for t in self.tiles]],
                        },
                    ],
                }
            )
        if not args:
            return None
        return {"op": "and", "args": args} if len(args) > 1 else args[0]

    def query_extension(self) -> dict | None:
        """The cloud limit in the ``query`` extension, for servers without CQL2.

        MGRS tiles stay client-side here: the query extension cannot say "this property or
        that one", and providers name the tile differently.
        """
        if self.max_cloud_cover is None:
            return None
        return {"eo:cloud_cover": {"lte": self.max_cloud_cover}}

    def keeps(self, item: dict) -> bool:
        """The client-side twin of the server filters."""
        props = item.get("properties", {})
        if self.max_cloud_cover is not None:
            cloud = props.get("eo:cloud_cover")
            if cloud is None or cloud > self.max_cloud_cover:
                return False
        return not self.tiles or item_mgrs_tile(item) in self.tiles


def normalise_mgrs_tile(tile: str) -> str:
    """``32TNS`` from ``32tns`` or ``T32TNS``; an error that shows the form for anything else."""
    match = MGRS_TILE.match(str(tile).upper().removeprefix("T").removeprefix("MGRS-"))
    if match is None or not 1 <= int(match.group(1)) <= 60:
        raise StacSearchError(
            f"MGRS tile {tile!r} is not a Sentinel-2 tile id: write it as UTM zone, latitude "
            "band and 100 km square, like 32TNS"
        )
    zone, band, square = match.groups()
    return f"{int(zone):02d}{band}{square}"


def item_mgrs_tile(item: dict) -> str | None:
    """The item's MGRS tile whichever way its provider records it, or None.

    Planetary Computer: ``s2:mgrs_tile``; Earth Search v1: ``mgrs:utm_zone``,
    ``mgrs:latitude_band``, ``mgrs:grid_square`` (and ``grid:code``).
    """
    props = item.get("properties", {})
    parts = [props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")]
    candidates = [
        props.get("s2:mgrs_tile"),
        "".join(str(p) for p in parts) if all(p is not None for p in parts) else None,
        props.get("grid:code") if str(props.get("grid:code")).startswith("MGRS-") else None,
    ]
    for candidate in filter(None, candidates):
        try:
            return normalise_mgrs_tile(candidate)
        except StacSearchError:
            continue  # a malformed value: try the provider's other fields
    return None


def _validate_bbox(bbox: tuple[float, ...]) -> None:
    if len(bbox) != 4:
        raise StacSearchError(f"bbox must be [min_lon, min_lat, max_lon, max_lat], got {bbox}")
    min_lon, min_lat, max_lon, max_lat = bbox
    if not (min_lon < max_lon and min_lat < max_lat):
        raise StacSearchError(
            f"bbox {list(bbox)} is inverted or empty: write it as "
            "[min_lon, min_lat, max_lon, max_lat] with min < max"
        )
    if not (-180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise StacSearchError(
            f"bbox {list(bbox)} is outside lon [-180, 180] / lat [-90, 90]: it must be in "
            "WGS84 degrees, not projected metres"
        )


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise StacSearchError(f"datetime {value!r} is not ISO 8601: {err}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _rfc3339(value: str) -> str:
    return _parse_time(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _failure(err: APIError, what: str, url: str, retries: int) -> StacSearchError:
    """One error for a request that failed after the retry budget: URL, HTTP status, fix."""
    status = getattr(err, "status_code", None)
    detail = str(err).strip().replace("\n", " ")[:300]
    if isinstance(err, InvalidAnswerError):
        return StacSearchError(
            f"{what} at {url} gave an answer that is not STAC JSON: {detail}. The server, or a "
            "proxy in front of it, is failing: retry later, or check the endpoint URL."
        )
    if status is None and any(b in detail for b in BROKEN_BODY):
        return StacSearchError(
            f"the STAC API at {url} broke off its answer ({what}, {retries} retries: {detail}). "
            "Check your network, or retry later."
        )
    if status is None:
        return StacSearchError(
            f"the STAC API at {url} does not answer ({what}, {retries} retries: {detail}). "
            "Check the endpoint URL in the config, your network, or start the local server."
        )
    hint = (
        "The server is overloaded or rate-limiting: retry later or raise `max_retries`."
        if status in RETRY_STATUSES
        else "Check the request parameters in the config."
    )
    return StacSearchError(
        f"{what} at {url} failed with HTTP {status} after {retries} retries: {detail}. {hint}"
    )


def open_client(request: SearchRequest) -> pystac_client.Client:
    """Open the API (its landing page names the search link and the conformance classes)."""
    retry = Retry(
        total=request.max_retries,
        backoff_factor=request.retry_backoff_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST /search is a read: retry it like a GET
        raise_on_status=False,
    )
    stac_io = CheckedStacApiIO(
        headers=request.headers,
        max_retries=retry,
        timeout=request.timeout_s,
        body_retries=request.max_retries,
        backoff_s=request.retry_backoff_s,
    )
    try:
        return pystac_client.Client.open(request.url, stac_io=stac_io, timeout=request.timeout_s)
    except APIError as err:
        raise _failure(err, "its landing page", request.url, request.max_retries) from None


def server_filters(client: pystac_client.Client, request: SearchRequest) -> dict:
    """Search arguments for the filters, in the richest form the server says it conforms to."""
    cql2, query = request.cql2_filter(), request.query_extension()
    if cql2 and client.conforms_to(ConformanceClasses.FILTER):
        return {"filter": cql2, "filter_lang": "cql2-json"}
    if query and client.conforms_to(ConformanceClasses.QUERY):
        return {"query": query}
    return {}


def search_items(request: SearchRequest) -> list[dict]:
    """Raw item dicts (not pystac Items, which rewrite ``proj:epsg``) matching the request.

    Sorted by datetime then id, so a rerun sees the same order; Planetary Computer items are
    signed. Raises StacSearchError for bad input, an unreachable or failing server (after
    retries), an unknown collection, or an empty result.
    """
    request.validate()
    client = open_client(request)
    search = client.search(
        method="POST",
        collections=list(request.collections) or None,
        bbox=list(request.bbox) if request.bbox else None,
        intersects=request.intersects,
        datetime=request.datetime_range,
        limit=request.page_size,
        max_items=request.max_items,
        **server_filters(client, request),
    )
    try:
        items = [item for item in _paged_items(search) if request.keeps(item)]
    except APIError as err:
        _check_collections(client, request)
        raise _failure(err, "the search", search.url, request.max_retries) from None
    if not items:
        _check_collections(client, request)
        raise EmptySearchError(_nothing_found(request))
    if is_planetary_computer(request.url):
        try:
            items = [sign_item(item) for item in items]
        except SigningError as err:
            raise StacSearchError(str(err)) from None
    return sorted(items, key=lambda it: (it["properties"]["datetime"], it["id"]))


def _paged_items(search: ItemSearch) -> Iterator[dict]:
    """The search's items page by page, stopping with an error where the ``next`` links loop.

    A server whose ``next`` link leads back to a page already read would otherwise be paged
    forever (``pystac_client`` follows ``next`` until a page has none).
    """
    followed: set[str] = set()
    seen_ids: set[str] = set()
    for number, page in enumerate(search.pages_as_dicts(), start=1):
        ids = {str(item.get("id")) for item in page.get("features", [])}
        if ids and ids <= seen_ids:
            raise StacSearchError(
                _loop_message(search.url, number, "repeats items of earlier pages")
            )
        seen_ids |= ids
        yield from page.get("features", [])
        link = next((k for k in page.get("links", []) if k.get("rel") == "next"), None)
        if link is None:
            continue
        key = json.dumps([link.get("href"), link.get("method"), link.get("body")], sort_keys=True)
        if key in followed:
            raise StacSearchError(
                _loop_message(
                    search.url, number, f"has a `next` link already followed ({link['href']})"
                )
            )
        followed.add(key)


def _loop_message(url: str, number: int, what: str) -> str:
    return (
        f"the search at {url} pages in a loop: page {number} {what}, so following its `next` "
        "links never ends. "
        "The STAC API's paging is broken: report it to its operator, or set `max_items`."
    )


def _nothing_found(request: SearchRequest) -> str:
    where = f"bbox {list(request.bbox)}" if request.bbox else "the search geometry"
    conditions = [f"between {request.start or '..'} and {request.end or '..'}"]
    if request.max_cloud_cover is not None:
        conditions.append(f"with eo:cloud_cover <= {request.max_cloud_cover}%")
    if request.tiles:
        conditions.append(f"in MGRS tiles {list(request.tiles)}")
    return (
        f"no {', '.join(request.collections) or 'STAC'} items over {where} "
        f"{' '.join(conditions)}. Widen the time window, raise the cloud limit, or check the "
        "region's bbox and tiles."
    )


def _check_collections(client: pystac_client.Client, request: SearchRequest) -> None:
    """Name an unknown collection: servers answer one with an error or with no items."""
    if not request.collections:
        return
    try:
        served = {c.id for c in client.get_collections()}
    except APIError as err:
        raise _failure(err, "the collection list", request.url, request.max_retries) from None
    unknown = sorted(set(request.collections) - served)
    if unknown:
        raise StacSearchError(
            f"unknown collection {unknown[0]!r} at {request.url}; it serves {sorted(served)}. "
            "Set `collection` in the config to one of them."
        )
