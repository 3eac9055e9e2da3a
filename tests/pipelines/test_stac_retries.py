"""Retries with backoff on HTTP 429, 5xx and timeouts, against a small STAC API on 127.0.0.1.

The server answers a landing page and a one-item search, after failing its first N requests
(with a status, or by answering too late); the search must come through within its retry
budget, and a server that never recovers must give one error naming the URL and the status.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.stac import SearchRequest, StacSearchError, search_items

BBOX = (9.0, 45.0, 9.1, 45.1)


class FlakyStacApi(ThreadingHTTPServer):
    """A STAC API whose first ``failures`` requests fail with ``status`` (or stall ``stall_s``)."""

    def __init__(self, failures: int, status: int = 503, stall_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures, self.status, self.stall_s = failures, status, stall_s
        self.requests: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def document(self, path: str) -> dict:
        if path == "/search":
            lon0, lat0, lon1, lat1 = BBOX
            ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
            item = {
                "type": "Feature",
                "stac_version": "1.0.0",
                "id": "S2A_32TNR_20240501_0_L2A",
                "collection": "sentinel-2-l2a",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "bbox": list(BBOX),
                "properties": {"datetime": "2024-05-01T10:30:00Z", "eo:cloud_cover": 3.0},
                "assets": {},
                "links": [],
            }
            return {"type": "FeatureCollection", "features": [item], "links": []}
        return {
            "type": "Catalog",
            "id": "flaky",
            "stac_version": "1.0.0",
            "description": "retry test",
            "conformsTo": ["https://api.stacspec.org/v1.0.0/item-search"],
            "links": [
                {"rel": "self", "href": self.url},
                {"rel": "root", "href": self.url},
                {
                    "rel": "search",
                    "type": "application/geo+json",
                    "href": f"{self.url}/search",
                    "method": "POST",
                },
            ],
        }


class _Handler(BaseHTTPRequestHandler):
    server: FlakyStacApi

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with self.server.lock:
            self.server.requests.append(f"{self.command} {self.path}")
            failing = len(self.server.requests) <= self.server.failures
        if failing and self.server.stall_s:
            time.sleep(self.server.stall_s)  # past the client's timeout: it has hung up
        elif failing:
            self._send(self.server.status, {"code": "unavailable"})
        else:
            self._send(200, self.server.document(self.path.rstrip("/") or "/"))

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        """Quiet: the test reads ``server.requests`` instead."""


def _serve(api: FlakyStacApi) -> Iterator[FlakyStacApi]:
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()
        thread.join()


@pytest.fixture
def flaky(request: pytest.FixtureRequest) -> Iterator[FlakyStacApi]:
    yield from _serve(FlakyStacApi(**request.param))


def _request(url: str, **changes) -> SearchRequest:
    base = dict(url=url, bbox=BBOX, retry_backoff_s=0.01, timeout_s=1.0, max_retries=3)
    return SearchRequest(**{**base, **changes})


@pytest.mark.parametrize(
    "flaky",
    [
        {"failures": 2, "status": 429},
        {"failures": 3, "status": 503},
        {"failures": 1, "status": 500},
        {"failures": 2, "stall_s": 1.5},
    ],
    indirect=True,
    ids=["429", "503", "500", "timeout"],
)
def test_search_comes_through_after_transient_failures(flaky: FlakyStacApi) -> None:
    items = search_items(_request(flaky.url, timeout_s=0.5))
    assert [it["id"] for it in items] == ["S2A_32TNR_20240501_0_L2A"]
    # every failure was retried, then the landing page and the search answered
    assert len(flaky.requests) >= flaky.failures + 2
    assert flaky.requests[-1] == "POST /search"


@pytest.mark.parametrize("flaky", [{"failures": 10**6, "status": 503}], indirect=True)
def test_a_server_that_keeps_failing_is_named_with_its_status(flaky: FlakyStacApi) -> None:
    with pytest.raises(StacSearchError) as failure:
        search_items(_request(flaky.url, max_retries=2))
    assert flaky.url in str(failure.value)
    assert "HTTP 503 after 2 retries" in str(failure.value)
    assert flaky.requests == ["GET /"] * 3  # the first try and two retries, then it gives up


@pytest.mark.parametrize("flaky", [{"failures": 10**6, "stall_s": 1.0}], indirect=True)
def test_a_server_that_never_answers_in_time_is_named(flaky: FlakyStacApi) -> None:
    with pytest.raises(StacSearchError, match="does not answer") as failure:
        search_items(_request(flaky.url, max_retries=1, timeout_s=0.3))
    assert flaky.url in str(failure.value)
    assert len(flaky.requests) == 2
