"""STAC search against a real local STAC API (`rustac serve`) over a handful of items."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines.stac import SearchRequest, StacSearchError, StacServer, search_items
from pipelines.stac.search import normalise_mgrs_tile
from pipelines.stac.server import free_port

BBOX = (9.0, 45.0, 9.1, 45.1)


def _item(item_id: str, date: str, cloud: float, tile: str = "32TNR") -> dict:
    lon0, lat0, lon1, lat1 = BBOX
    ring = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": list(BBOX),
        "properties": {
            "datetime": f"{date}T10:30:00Z",
            "eo:cloud_cover": cloud,
            "grid:code": f"MGRS-{tile}",
        },
        "assets": {},
        "links": [],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stac")
    items = [
        _item("a", "2024-05-01", 5.0),
        _item("b", "2024-05-11", 45.0),
        _item("c", "2024-06-01", 10.0, tile="32TNS"),
        _item("d", "2024-08-01", 1.0),
    ]
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    (root / "collection.json").write_text(
        json.dumps(
            {
                "type": "Collection",
                "id": "sentinel-2-l2a",
                "stac_version": "1.0.0",
                "description": "test",
                "license": "proprietary",
                "links": [],
                "extent": {
                    "spatial": {"bbox": [list(BBOX)]},
                    "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]},
                },
            }
        )
    )
    with StacServer([root / "collection.json", root / "items.json"]) as srv:
        yield srv


def _request(url: str, **changes) -> SearchRequest:
    base = dict(
        url=url,
        collections=("sentinel-2-l2a",),
        bbox=BBOX,
        start="2024-04-01",
        end="2024-07-01",
        max_cloud_cover=20.0,
    )
    return SearchRequest(**{**base, **changes})


def test_search_filters_by_time_and_cloud_cover_on_the_client(server: StacServer) -> None:
    # rustac serve has no filter extension: the cloud limit must be applied client-side.
    assert [it["id"] for it in search_items(_request(server.url))] == ["a", "c"]


def test_search_filters_by_mgrs_tile(server: StacServer) -> None:
    found = search_items(_request(server.url, mgrs_tiles=("32TNS",)))
    assert [it["id"] for it in found] == ["c"]


def test_search_pages_through_results(server: StacServer) -> None:
    found = search_items(_request(server.url, page_size=1, max_cloud_cover=100.0))
    assert [it["id"] for it in found] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"collections": ("sentinel-1-grd",)}, "unknown collection 'sentinel-1-grd'"),
        ({"mgrs_tiles": ("32XYZ1",)}, "not a Sentinel-2 tile id"),
        ({"page_size": 0}, "page_size must be at least 1"),
        ({"bbox": None, "intersects": {"type": "Point"}}, "GeoJSON geometry"),
        ({"intersects": {"type": "Point", "coordinates": [9.05, 45.05]}}, "not both"),
        ({"bbox": (9.1, 45.0, 9.0, 45.1)}, "inverted"),
        ({"bbox": (500000.0, 5000000.0, 510000.0, 5010000.0)}, "WGS84 degrees"),
        ({"start": "2024-07-01", "end": "2024-04-01"}, "wrong order"),
        ({"start": "2023-01-01", "end": "2023-02-01"}, "no sentinel-2-l2a items"),
    ],
)
def test_bad_input_gives_one_clear_error(server: StacServer, changes: dict, message: str) -> None:
    with pytest.raises(StacSearchError, match=message):
        search_items(_request(server.url, **changes))


def test_a_server_that_does_not_answer_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StacSearchError, match="does not answer"):
        search_items(_request(url, max_retries=0))


def test_server_leaves_no_process_behind_even_on_error(tmp_path: Path) -> None:
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(RuntimeError, match="boom"), StacServer([tmp_path / "items.json"]) as srv:
        pid = srv._process.pid
        raise RuntimeError("boom")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("32TNS", "32TNS"),
        ("32tns", "32TNS"),
        ("T32TNS", "32TNS"),
        ("5VNK", "05VNK"),
        ("MGRS-13TDE", "13TDE"),
    ],
)
def test_mgrs_tiles_are_read_in_the_forms_people_write_them(written: str, canonical: str) -> None:
    assert normalise_mgrs_tile(written) == canonical


@pytest.mark.parametrize("written", ["61TNS", "32ONS", "32TNW", "32TN", "tile"])
def test_a_malformed_mgrs_tile_is_refused(written: str) -> None:
    with pytest.raises(StacSearchError, match="like 32TNS"):
        normalise_mgrs_tile(written)
