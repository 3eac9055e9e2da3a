"""Our search code against real recorded STAC API responses, replayed offline with vcrpy.

The cassettes in ``../shared/data/stac/pystac-client_cassettes`` were recorded from Earth Search
v1 and Planetary Computer by pystac-client's test suite. Each test joins the landing page of the
same server (another cassette) with a recorded search, and replays them with ``record_mode=none``:
a request of ours that the recording does not hold fails the test instead of reaching a network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import planetary_computer.sas
import pytest
import vcr
import yaml

from pipelines.bands import asset_key
from pipelines.stac import SearchRequest, item_mgrs_tile, search_items
from pipelines.stac.hrefs import HrefPolicy
from pipelines.stac.items import BOA_OFFSET, check_asset_hrefs, reflectance_offset, split_usable
from pipelines.stac.search import open_client, server_filters
from pipelines.stac.signing import is_sas_signed

PC = "https://planetarycomputer.microsoft.com/api/stac/v1"
EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
PC_LANDING = "TestAPI.test_instance.yaml"
ES_LANDING = "TestCLICollections.test_collections[inprocess].yaml"
FILTER_SEARCH = "TestCLISearch.test_filter[inprocess].yaml"


def _same_route(r1: vcr.request.Request, r2: vcr.request.Request) -> None:
    """The same path, with or without a trailing slash (Planetary Computer links its root as
    ``.../v1/`` and answers there as at ``.../v1``)."""
    assert r1.path.rstrip("/") == r2.path.rstrip("/")


def _page_token(request: vcr.request.Request) -> str | None:
    body = json.loads(request.body) if request.body else {}
    return body.get("next") or body.get("token")


def _same_page(r1: vcr.request.Request, r2: vcr.request.Request) -> None:
    """The same page of a search: paging tokens equal (bodies may word filters differently)."""
    assert _page_token(r1) == _page_token(r2)


sent: dict[tuple[str, str, bytes | None], None] = {}  # our requests in order, each once


def _note(request: vcr.request.Request) -> vcr.request.Request:
    sent[(request.method, request.path, request.body)] = None
    return request


def _searches_played(cassette: vcr.cassette.Cassette) -> int:
    """How many recorded search pages (POST) were served."""
    return sum(
        1 for i, r in enumerate(cassette.requests) if r.method == "POST" and cassette.play_counts[i]
    )


def _posted() -> list[dict]:
    return [json.loads(body) for method, _, body in sent if method == "POST"]


@pytest.fixture
def replay(real_data: Callable[..., Path], tmp_path: Path) -> Callable[..., vcr.cassette.Cassette]:
    """``replay(*cassettes, match_on=...)``: a context that serves those recorded interactions."""
    folder = real_data("stac", "pystac-client_cassettes")

    @contextmanager
    def use(
        *names: str, match_on: tuple[str, ...] = ("method", "route", "body")
    ) -> Iterator[vcr.cassette.Cassette]:
        interactions = []
        for name in names:
            interactions += yaml.safe_load((folder / name).read_text())["interactions"]
        joined = tmp_path / "joined.yaml"
        joined.write_text(yaml.safe_dump({"interactions": interactions, "version": 1}))
        player = vcr.VCR(record_mode="none", match_on=match_on, before_record_request=_note)
        player.register_matcher("route", _same_route)
        player.register_matcher("page", _same_page)
        # pystac-client reads the landing page again through its root link: allow repeats
        with player.use_cassette(str(joined), allow_playback_repeats=True) as cassette:
            sent.clear()  # loading passed the recorded requests through _note too
            yield cassette

    return use


@pytest.fixture
def sas_tokens(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The token fetch of planetary-computer, answered offline; records (account, container)."""
    requested: list[tuple[str, str]] = []

    def get_token(account: str, container: str, **_: object) -> planetary_computer.sas.SASToken:
        requested.append((account, container))
        expiry = datetime.now(UTC) + timedelta(minutes=45)
        token = f"st=2025-01-01&se={expiry:%Y-%m-%dT%H:%M:%SZ}&sp=rl&sv=2024-05-04&sr=c&sig=t"
        return planetary_computer.sas.SASToken(token=token, expiry=expiry)

    monkeypatch.setattr(planetary_computer.sas, "get_token", get_token)
    return requested


def test_planetary_computer_datetime_search_gives_33_signed_items(replay, sas_tokens) -> None:
    request = SearchRequest(
        url=PC,
        collections=("sentinel-2-l2a",),
        start="2019-01-01T00:00:01Z",
        end="2019-01-01T00:00:10Z",
        page_size=None,
    )
    with replay(PC_LANDING, "TestItemSearch.test_datetime_results.yaml"):
        items = search_items(request)
    assert len(_posted()) == 1  # one search page
    assert len(items) == 33
    assert all(it["properties"]["datetime"].startswith("2019-01-01T00:00:01") for it in items)
    assert ("sentinel2l2a01", "sentinel2-l2") in sas_tokens
    for item in items:
        for band in ("B01", "B04", "B8A", "B12", "SCL"):
            assert asset_key(item, band) == band
            assert is_sas_signed(item["assets"][band]["href"])
        assert reflectance_offset(item) == 0.0  # baseline 02.12: before the offset
    usable, skipped = split_usable(items)
    assert (len(usable), skipped) == (33, [])
    check_asset_hrefs(usable, HrefPolicy.for_endpoint(PC))  # signed blob hrefs are allowed
    assert {item_mgrs_tile(it) for it in items} >= {"60VUK", "59VPE", "58UFE"}


def test_earth_search_multi_collection_search_keeps_s2_and_skips_landsat(replay) -> None:
    request = SearchRequest(
        url=EARTH_SEARCH,
        collections=("sentinel-2-l2a", "landsat-c2-l2"),
        intersects={"type": "Point", "coordinates": [-105.1019, 40.1672]},
        start="2023-10-08T00:00:00Z",
        end="2023-10-08T23:59:59Z",
        page_size=None,
    )
    with replay(ES_LANDING, "test_multiple_collections.yaml") as cassette:
        items = search_items(request)
    # the first page, and the (empty) page behind the POST "next" link
    assert _searches_played(cassette) == len(_posted()) == 2
    assert [it["id"] for it in items] == [
        "LC08_L2SP_033032_20231008_02_T1",
        "S2A_13TDE_20231008_0_L2A",
    ]
    usable, skipped = split_usable(items)
    assert [it["id"] for it in usable] == ["S2A_13TDE_20231008_0_L2A"]
    assert [s.item_id for s in skipped] == ["LC08_L2SP_033032_20231008_02_T1"]
    check_asset_hrefs(usable, HrefPolicy.for_endpoint(EARTH_SEARCH))
    # Landsat shares Earth Search's common names (red, nir08, swir16): only the red-edge bands,
    # B08, B09, the SCL and the processing baseline tell it apart.
    assert skipped[0].reason.startswith("no asset for bands B05, B06, B07, B08, B09, SCL; ")
    assert "s2:processing_baseline" in skipped[0].reason
    s2 = usable[0]
    assert asset_key(s2, "B04") == "red" and asset_key(s2, "SCL") == "scl"
    assert item_mgrs_tile(s2) == "13TDE"
    assert s2["properties"]["earthsearch:boa_offset_applied"] is True
    assert reflectance_offset(s2) == BOA_OFFSET  # baseline 05.09 decides, not the flag


def test_cloud_filtered_search_pages_by_next_token_and_drops_what_the_server_let_through(
    replay, real_data
) -> None:
    """Earth Search advertises the query extension, not CQL2, so we send ``query``. Its recorded
    answer to the same cloud limit sent as an (unadvertised) CQL2 filter ignored the filter:
    Sentinel-1 scenes without cloud cover and scenes over 40 %, which the client drops."""
    request = SearchRequest(
        url=EARTH_SEARCH, collections=(), max_cloud_cover=40, page_size=None, max_items=20
    )
    with replay(FILTER_SEARCH, match_on=("method", "route", "page")) as cassette:
        items = search_items(request)
    assert _searches_played(cassette) == 2
    sent = _posted()
    assert len(sent) == 2 and "filter" not in sent[0]
    assert sent[0]["query"] == {"eo:cloud_cover": {"lte": 40}}
    recorded = yaml.safe_load(
        real_data("stac", "pystac-client_cassettes", FILTER_SEARCH).read_text()
    )["interactions"]
    assert sent[1] == json.loads(recorded[2]["request"]["body"])  # the next token, nothing else
    pages = [json.loads(i["response"]["body"]["string"])["features"] for i in recorded[1:]]
    served = [f for page in pages for f in page]
    assert len(served) == 20
    clouds = {f["id"]: f["properties"].get("eo:cloud_cover") for f in served}
    assert sum(c is None for c in clouds.values()) == 3  # the Sentinel-1 scenes
    assert sum(c is not None and c > 40 for c in clouds.values()) == 5
    assert {it["id"] for it in items} == {i for i, c in clouds.items() if c is not None and c <= 40}
    usable, skipped = split_usable(items)
    assert {it["collection"] for it in usable} == {"sentinel-2-c1-l2a", "sentinel-2-l2a"}
    assert {it["id"] for it in items if it["collection"] == "sentinel-2-l1c"} == {
        s.item_id for s in skipped
    }
    assert all(s.reason == "no asset for bands SCL" for s in skipped)
    check_asset_hrefs(usable, HrefPolicy.for_endpoint(EARTH_SEARCH))


def test_planetary_computer_pages_by_token_up_to_max_items(replay, real_data, sas_tokens) -> None:
    request = SearchRequest(
        url=PC,
        collections=("naip",),
        bbox=(-73.21, 43.99, -73.12, 44.05),
        page_size=10,
        max_items=20,
    )
    with replay(PC_LANDING, "TestItemSearch.test_result_paging.yaml") as cassette:
        items = search_items(request)
    assert _searches_played(cassette) == len(_posted()) == 2
    recorded = yaml.safe_load(
        real_data(
            "stac", "pystac-client_cassettes", "TestItemSearch.test_result_paging.yaml"
        ).read_text()
    )["interactions"]
    ids = [
        f["id"] for i in recorded for f in json.loads(i["response"]["body"]["string"])["features"]
    ]
    assert sorted(it["id"] for it in items) == sorted(ids)
    assert all(is_sas_signed(it["assets"]["image"]["href"]) for it in items)
    usable, skipped = split_usable(items)
    assert usable == [] and len(skipped) == 20  # NAIP aerial images are no Sentinel-2 scenes


@pytest.mark.parametrize(
    ("landing", "url", "expected"),
    [
        (PC_LANDING, PC, "filter"),
        (ES_LANDING, EARTH_SEARCH, "query"),
        (
            "TestCLISearch.test_non_conformant_can_be_fixed[inprocess].yaml",
            "https://earth-search.aws.element84.com/v0",
            None,
        ),
    ],
)
def test_filters_go_to_the_server_in_the_form_its_landing_page_conforms_to(
    replay, landing: str, url: str, expected: str | None
) -> None:
    request = SearchRequest(url=url, max_cloud_cover=20, mgrs_tiles=("13TDE",))
    with replay(landing, match_on=("method", "route")):
        client = open_client(request)
    sent = server_filters(client, request)
    assert (next(iter(sent), None)) == expected
    if expected == "filter":
        tiles = sent["filter"]["args"][1]["args"]
        assert tiles[0]["args"][1] == ["13TDE"] and tiles[1]["args"][1] == ["MGRS-13TDE"]
