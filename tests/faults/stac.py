"""STAC faults: rate limits, server errors, hangs, broken bodies, looping pages, bad asset hrefs.

Each fault is served by :mod:`tests.faults.fake_stac` in front of real items of the tiny demo
world, and :func:`pipelines.stac.search_items` (or the item checks and the asset reader for the
hrefs) runs against it. Expected: a transient fault is retried and the search returns every
item; a lasting one, or one that retrying cannot fix, gives one :class:`StacSearchError` naming
the cause; never a partial result.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from rasterio.enums import Resampling

from pipelines.grid import CoregistrationError, region_grid
from pipelines.scene_reader import read_asset
from pipelines.stac import SearchRequest, StacSearchError, search_items
from pipelines.stac.items import item_epsg, split_usable
from tests.faults.fake_stac import (
    LANDING,
    PAGE1,
    PAGE2,
    Answer,
    FakeStacApi,
    serving,
    world_items,
)
from tests.faults.outcome import FaultRow

log = logging.getLogger(__name__)

TIMEOUT_S = 0.5
RETRIES = 2
HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


def _search(api: FakeStacApi, bbox: tuple) -> list[dict]:
    request = SearchRequest(
        url=api.url,
        bbox=bbox,
        page_size=2,
        max_retries=RETRIES,
        retry_backoff_s=0.01,
        timeout_s=TIMEOUT_S,
    )
    return search_items(request)


def _shown(err: BaseException, api: FakeStacApi) -> str:
    """The error as the user reads it, the fake API's address and port masked."""
    text = str(err).replace(api.url, "<url>").replace(str(api.server_address[1]), "<port>")
    return f"{type(err).__name__}: {text}"


class StacTrials:
    """Runs one fault plan at a time against the fake API and records the outcome in a row."""

    def __init__(self, items: list[dict], bbox: tuple, collection: dict) -> None:
        self.items, self.bbox, self.collection = items, bbox, collection
        self.expected = [it["id"] for it in items]

    def comes_through(
        self, row: FaultRow, plan: dict[str, list[Answer]], min_wait_s: float = 0.0
    ) -> None:
        """The search retries past the fault and returns every item (after ``min_wait_s``)."""
        with serving(self.items, self.collection, plan) as api:
            started = time.monotonic()
            try:
                found = [it["id"] for it in _search(api, self.bbox)]
            except Exception as err:  # noqa: BLE001 - any error is the outcome under test
                row.record(False, why=f"no retry came through: {_shown(err, api)}")
                return
            waited = time.monotonic() - started
            served = api.faults_served
        complete = found == self.expected
        row.record(
            complete and served > 0 and waited >= min_wait_s,
            data_lost=not complete,
            why=f"found {found}, expected {self.expected}; {served} faults served, "
            f"waited {waited:.2f} s (at least {min_wait_s} s expected)",
        )

    def fails_clearly(
        self,
        row: FaultRow,
        plan: dict[str, list[Answer]],
        needles: tuple[str, ...],
        setup: Callable[[FakeStacApi], None] | None = None,
    ) -> None:
        """The search raises one StacSearchError whose message holds the URL and ``needles``."""
        with serving(self.items, self.collection, plan) as api:
            if setup:
                setup(api)
            try:
                found = _search(api, self.bbox)
            except StacSearchError as err:
                message = str(err)
                clear = api.url in message and all(n.lower() in message.lower() for n in needles)
                row.record(clear, why=f"unclear error (wanted {needles}): {_shown(err, api)}")
                if clear and not row.failures:
                    row.what_the_user_sees = _shown(err, api)
                return
            except Exception as err:  # noqa: BLE001 - a non-StacSearchError is the finding
                row.record(False, why=f"not a StacSearchError: {_shown(err, api)}"[:500])
                return
        row.record(False, data_lost=True, why=f"silent result of {len(found)} items")


def _status_rows(trials: StacTrials) -> list[FaultRow]:
    rows = []
    for status in (500, 502, 503):
        row = FaultRow(f"STAC HTTP {status}", "")
        trials.comes_through(row, {LANDING: [Answer(status, b"{}")] * 2})
        trials.comes_through(row, {PAGE2: [Answer(status, b"{}")] * 2})
        trials.fails_clearly(row, {PAGE2: [Answer(status, b"{}")] * 10}, (f"HTTP {status}",))
        rows.append(_summarise(row, f"retried; if it lasts: one error naming HTTP {status}"))
    return rows


def _rate_limit_rows(trials: StacTrials) -> list[FaultRow]:
    with_header = FaultRow("STAC HTTP 429 with Retry-After: 1", "")
    limited = Answer(429, b"{}", headers={"Retry-After": "1"})
    trials.comes_through(with_header, {PAGE1: [limited]}, min_wait_s=1.0)
    trials.comes_through(with_header, {PAGE2: [limited]}, min_wait_s=1.0)
    trials.fails_clearly(with_header, {PAGE2: [limited] * 10}, ("HTTP 429", "rate-limiting"))
    without = FaultRow("STAC HTTP 429 without Retry-After", "")
    trials.comes_through(without, {LANDING: [Answer(429, b"{}")] * 2})
    trials.comes_through(without, {PAGE2: [Answer(429, b"{}")] * 2})
    trials.fails_clearly(without, {PAGE1: [Answer(429, b"{}")] * 10}, ("HTTP 429",))
    return [
        _summarise(with_header, "waits the Retry-After, retries; if it lasts: one error"),
        _summarise(without, "retried with backoff; if it lasts: one error naming HTTP 429"),
    ]


def _hang_row(trials: StacTrials) -> FaultRow:
    row = FaultRow(f"STAC answer hangs past the {TIMEOUT_S} s timeout", "")
    stall = Answer(stall_s=TIMEOUT_S * 3)
    trials.comes_through(row, {LANDING: [stall]})
    trials.comes_through(row, {PAGE2: [stall]})
    trials.fails_clearly(row, {LANDING: [stall] * 10}, ("does not answer",))
    trials.fails_clearly(row, {PAGE2: [stall] * 10}, ("timed out",))
    return _summarise(row, "retried; if it lasts: one error saying the API does not answer")


def _broken_body_rows(trials: StacTrials) -> list[FaultRow]:
    truncated = FaultRow("STAC truncated JSON (body cut, length consistent)", "")
    for route in (LANDING, PAGE1, PAGE2):
        trials.fails_clearly(truncated, {route: [Answer(cut_to=80)] * 10}, ("not valid JSON",))
    dropped = FaultRow("STAC connection dropped mid-body", "")
    trials.comes_through(dropped, {PAGE2: [Answer(drop_after=80)]})
    trials.fails_clearly(dropped, {PAGE2: [Answer(drop_after=80)] * 10}, ("search",))
    html = FaultRow("STAC HTML error page", "")
    page = Answer(body=HTML, content_type="text/html")
    trials.fails_clearly(html, {PAGE2: [page] * 10}, ("not valid JSON", "text/html"))
    trials.comes_through(html, {PAGE2: [Answer(502, HTML, "text/html")] * 2})
    trials.fails_clearly(html, {LANDING: [Answer(502, HTML, "text/html")] * 10}, ("HTTP 502",))
    return [
        _summarise(truncated, "one error: the answer is not valid JSON, with the URL"),
        _summarise(dropped, "retried; if it lasts: one error naming the search URL"),
        _summarise(html, "HTML with 200: one error naming it; 502 HTML: retried, then an error"),
    ]


def _loop_row(trials: StacTrials) -> FaultRow:
    row = FaultRow("STAC `next` link that loops", "")

    def to_itself(api: FakeStacApi) -> None:
        page = api.document(PAGE2)
        link = {"rel": "next", "href": f"{api.url}/search?token=2", "method": "GET"}
        api.documents[PAGE2] = {**page, "links": [link]}

    def to_first(api: FakeStacApi) -> None:
        page = api.document(PAGE2)
        link = {"rel": "next", "href": f"{api.url}/search?token=1", "method": "GET"}
        api.documents[PAGE2] = {**page, "links": [link]}

    for setup in (to_itself, to_first):
        trials.fails_clearly(row, {}, ("next", "loop"), setup=setup)
    return _summarise(row, "one error: the API's `next` links loop")


def _asset_row(trials: StacTrials) -> FaultRow:
    """An asset without an href is skipped by the item checks; a 404 href fails naming it."""
    row = FaultRow("STAC item asset: missing href / href answers 404", "")
    item = json.loads(json.dumps(trials.items[0]))
    del item["assets"]["red"]["href"]
    usable, skipped = split_usable([item, *trials.items[1:]])
    named = len(skipped) == 1 and "B04" in skipped[0].reason and "href" in skipped[0].reason
    row.record(
        named and len(usable) == len(trials.items) - 1,
        why=f"item checks kept {len(usable)} and skipped {skipped}",
    )
    shown = [f"skipped: {skipped[0].reason}" if skipped else "not skipped"]
    with serving(trials.items, trials.collection) as api:
        href = f"{api.url}/assets/B04.tif"
        grid = region_grid(trials.bbox, item_epsg(item))
        try:
            read_asset(href, grid, Resampling.bilinear)
        except CoregistrationError as err:
            ok = href in str(err) and "404" in str(err)
            row.record(ok, why=f"unclear error: {_shown(err, api)}")
            shown.append(_shown(err, api).split(". ")[0])
        except Exception as err:  # noqa: BLE001 - a raw GDAL error is the finding
            row.record(False, why=f"not a CoregistrationError: {_shown(err, api)}"[:500])
        else:
            row.record(False, data_lost=True, why="a 404 asset read as an image")
    row.what_the_user_sees = "; ".join(shown)
    return row


def _summarise(row: FaultRow, expected: str) -> FaultRow:
    """Put the expected behaviour in front of the message the user saw."""
    seen = row.what_the_user_sees
    row.what_the_user_sees = f"{expected}" + (f" ({seen})" if seen else "")
    return row


def stac_faults(world: Path) -> list[FaultRow]:
    """Every STAC fault against the items of ``world``'s lombardy region."""
    collection = json.loads((world / "collection.json").read_text())
    trials = StacTrials(*world_items(world), collection)
    rows = [*_rate_limit_rows(trials), *_status_rows(trials), _hang_row(trials)]
    rows += [*_broken_body_rows(trials), _loop_row(trials), _asset_row(trials)]
    for row in rows:
        log.info("%s: %d/%d survived", row.fault, row.survived, row.injected)
    return rows
