"""A STAC API on 127.0.0.1 that serves two pages of real items and injects faults on cue.

Routes: ``GET /`` (landing page), ``GET /collections`` (the items' collection), ``POST /search``
(page 1, its ``next`` link a GET of ``/search?token=2``), ``GET /search?token=2`` (page 2, the
last), and ``GET /assets/<name>`` (404: an asset that was never published). A fault is a list of
:class:`Answer` per route, served one per request before the route answers normally again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LANDING, COLLECTIONS, PAGE1, PAGE2, ASSET = "landing", "collections", "page1", "page2", "asset"


@dataclass(frozen=True)
class Answer:
    """One faulty answer: a status and body, a stall, or a body cut short.

    ``body`` is raw bytes or ``None`` for the route's normal document; ``stall_s`` sleeps before
    answering (past the client's timeout, it has hung up); ``cut_to`` sends only the first bytes
    of the body with a matching Content-Length (a server or proxy that truncated it);
    ``drop_after`` sends that many bytes of a body whose Content-Length promised all of it, then
    closes the connection.
    """

    status: int = 200
    body: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stall_s: float = 0.0
    cut_to: int | None = None
    drop_after: int | None = None


class FakeStacApi(ThreadingHTTPServer):
    """Serves ``items`` over two pages; ``plan[route]`` lists the faulty answers to give first."""

    daemon_threads = True

    def __init__(
        self, items: list[dict], collection: dict, plan: dict[str, list[Answer]] | None = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.items, self.collection = items, collection
        self.plan = {route: list(answers) for route, answers in (plan or {}).items()}
        self.documents: dict[str, dict] = {}
        self.requests: list[str] = []
        self.faults_served = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_answer(self, route: str) -> Answer | None:
        with self.lock:
            answers = self.plan.get(route, [])
            if not answers:
                return None
            self.faults_served += 1
            return answers.pop(0)

    def document(self, route: str) -> dict:
        if route in self.documents:
            return self.documents[route]
        if route == PAGE1:
            half = (len(self.items) + 1) // 2
            next_link = {"rel": "next", "href": f"{self.url}/search?token=2", "method": "GET"}
            return _page(self.items[:half], [next_link])
        if route == PAGE2:
            return _page(self.items[(len(self.items) + 1) // 2 :], [])
        if route == COLLECTIONS:
            return {"collections": [self.collection], "links": []}
        return _landing(self.url)


def _page(items: list[dict], links: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": items, "links": links}


def _landing(url: str) -> dict:
    return {
        "type": "Catalog",
        "id": "faulty",
        "stac_version": "1.0.0",
        "description": "fault injection",
        "conformsTo": [
            "https://api.stacspec.org/v1.0.0/item-search",
            "https://api.stacspec.org/v1.0.0/collections",
        ],
        "links": [
            {"rel": "self", "href": url},
            {"rel": "root", "href": url},
            {
                "rel": "search",
                "type": "application/geo+json",
                "href": f"{url}/search",
                "method": "POST",
            },
        ],
    }


def _route(method: str, path: str) -> str:
    if path.startswith("/assets/"):
        return ASSET
    if path.startswith("/collections"):
        return COLLECTIONS
    if path.startswith("/search"):
        return PAGE2 if "token=2" in path else PAGE1
    return LANDING


class _Handler(BaseHTTPRequestHandler):
    server: FakeStacApi
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = _route(self.command, self.path)
        with self.server.lock:
            self.server.requests.append(f"{self.command} {self.path}")
        answer = self.server.next_answer(route)
        if route == ASSET and answer is None:
            answer = Answer(status=404, body=b"Not Found", content_type="text/plain")
        if answer is None:
            answer = Answer()
        if answer.stall_s:
            time.sleep(answer.stall_s)
        body = answer.body
        if body is None:
            body = json.dumps(self.server.document(route)).encode()
        self._send(answer, body)

    def _send(self, answer: Answer, body: bytes) -> None:
        sent = body[: answer.cut_to] if answer.cut_to is not None else body
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(sent)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.drop_after is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(sent[: answer.drop_after] if answer.drop_after is not None else sent)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the client hung up (a stall past its timeout)
        if answer.drop_after is not None:
            self.close_connection = True

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        """Quiet: the scenarios read ``server.requests`` instead."""


def world_items(world: Path, region: str = "lombardy") -> tuple[list[dict], tuple]:
    """The region's items of a generated demo world, sorted as a search returns them, and its
    bbox."""
    features = json.loads((world / "items.json").read_text())["features"]
    manifest = json.loads((world / "manifest.json").read_text())
    bbox = next(tuple(r["bbox"]) for r in manifest["regions"] if r["name"] == region)
    items = [f for f in features if f["id"].split("_")[1] in _tiles(features, bbox)]
    return sorted(items, key=lambda it: (it["properties"]["datetime"], it["id"])), bbox


def _tiles(features: list[dict], bbox: tuple) -> set[str]:
    """Tiles of the items whose footprint overlaps ``bbox``."""
    lon0, lat0, lon1, lat1 = bbox
    return {
        f["id"].split("_")[1]
        for f in features
        if f["bbox"][0] < lon1
        and f["bbox"][2] > lon0
        and f["bbox"][1] < lat1
        and f["bbox"][3] > lat0
    }


@contextmanager
def serving(
    items: list[dict], collection: dict, plan: dict[str, list[Answer]] | None = None
) -> Iterator[FakeStacApi]:
    """A :class:`FakeStacApi` serving in a thread for the ``with`` block."""
    api = FakeStacApi(items, collection, plan)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()
        thread.join()
