"""Answers a STAC API should not give: bodies that are not JSON, bodies that break off, and
``next`` links that loop. Each must end in one StacSearchError naming the cause, or, for a
broken-off body, a retry; never a bare JSONDecodeError, an endless search or a partial result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.stac import SearchRequest, StacSearchError, search_items
from tests.faults.fake_stac import LANDING, PAGE2, Answer, FakeStacApi, serving, world_items


@pytest.fixture(scope="module")
def world(tiny_world: Path) -> tuple[list[dict], tuple, dict]:
    items, bbox = world_items(tiny_world)
    return items, bbox, json.loads((tiny_world / "collection.json").read_text())


def _search(api: FakeStacApi, bbox: tuple) -> list[str]:
    request = SearchRequest(
        url=api.url, bbox=bbox, page_size=2, max_retries=2, retry_backoff_s=0.01, timeout_s=2.0
    )
    return [item["id"] for item in search_items(request)]


@pytest.mark.parametrize("route", [LANDING, PAGE2])
def test_a_truncated_body_is_named_with_its_url(world, route: str) -> None:
    items, bbox, collection = world
    with (
        serving(items, collection, {route: [Answer(cut_to=80)] * 10}) as api,
        pytest.raises(StacSearchError, match="not valid JSON") as failure,
    ):
        _search(api, bbox)
    assert api.url in str(failure.value)
    assert "80 characters" in str(failure.value)


def test_an_html_page_with_http_200_is_named_as_such(world) -> None:
    items, bbox, collection = world
    page = Answer(body=b"<html><body>Sign in</body></html>", content_type="text/html")
    with (
        serving(items, collection, {PAGE2: [page]}) as api,
        pytest.raises(StacSearchError, match="Content-Type text/html") as failure,
    ):
        _search(api, bbox)
    assert f"{api.url}/search?token=2" in str(failure.value)


def test_a_body_that_breaks_off_is_retried(world) -> None:
    items, bbox, collection = world
    with serving(items, collection, {PAGE2: [Answer(drop_after=80)] * 2}) as api:
        assert _search(api, bbox) == [item["id"] for item in items]
    assert api.faults_served == 2


def test_a_body_that_keeps_breaking_off_is_named(world) -> None:
    items, bbox, collection = world
    with (
        serving(items, collection, {PAGE2: [Answer(drop_after=80)] * 10}) as api,
        pytest.raises(StacSearchError, match="broke off its answer"),
    ):
        _search(api, bbox)


@pytest.mark.parametrize(
    ("token", "says"),
    [("2", "already followed"), ("1", "repeats items of earlier pages")],
    ids=["to-itself", "to-the-first-page"],
)
def test_next_links_that_loop_end_in_one_error(world, token: str, says: str) -> None:
    items, bbox, collection = world
    with serving(items, collection) as api:
        link = {"rel": "next", "href": f"{api.url}/search?token={token}", "method": "GET"}
        api.documents[PAGE2] = {**api.document(PAGE2), "links": [link]}
        with pytest.raises(StacSearchError, match="pages in a loop") as failure:
            _search(api, bbox)
    assert says in str(failure.value)
    assert len(api.requests) < 10
