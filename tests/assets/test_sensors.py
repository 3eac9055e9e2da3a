"""The `new_scenes` sensor: runs for partitions with new items, never twice, and an unreachable
STAC API costs a tick, not the cursor."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.resources import StacApi
from assets.sensors import items_digest, new_scenes
from pipelines.stac import StacServer
from pipelines.stac.server import free_port

LATE_ITEM = "S2A_32TNR_20240823_0_L2A"  # partition lombardy|2024-07-01


def _serve(world: Path, tmp: Path, leave_out: tuple[str, ...] = ()) -> StacServer:
    """A STAC API over the tiny world's items, some of them not published yet."""
    items = json.loads((world / "items.json").read_text())
    items["features"] = [f for f in items["features"] if f["id"] not in leave_out]
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "items.json").write_text(json.dumps(items))
    return StacServer([world / "collection.json", tmp / "items.json"])


def _tick(url: str, cursor: str | None) -> dg.SensorResult:
    resources = {"stac": StacApi(endpoint=url)}
    with dg.build_sensor_context(cursor=cursor, resources=resources) as context:
        return new_scenes(context)


def _partitions(result: dg.SensorResult) -> list[str]:
    return sorted(str(r.partition_key) for r in result.run_requests)


def test_new_items_request_their_partition_once(tiny_world: Path, tmp_path: Path) -> None:
    with _serve(tiny_world, tmp_path / "early", leave_out=(LATE_ITEM,)) as server:
        first = _tick(server.url, None)
    assert _partitions(first) == [
        "beauce|2024-04-01",
        "beauce|2024-07-01",
        "lombardy|2024-04-01",
        "lombardy|2024-07-01",
    ]
    with _serve(tiny_world, tmp_path / "late") as server:
        second = _tick(server.url, first.cursor)
        third = _tick(server.url, second.cursor)
    # Only the partition the late item falls in runs again, with a new run key; then nothing.
    assert _partitions(second) == ["lombardy|2024-07-01"]
    assert second.run_requests[0].tags["matter/items"] == "2"
    assert second.run_requests[0].tags["matter/items_before"] == "1"
    assert second.run_requests[0].run_key not in {r.run_key for r in first.run_requests}
    assert third.run_requests == []
    assert third.skip_reason is not None
    assert json.loads(third.cursor)["lombardy|2024-07-01"] == {
        "items": 2,
        "digest": items_digest(["S2B_32TNR_20240719_0_L2A", LATE_ITEM]),
    }


def test_unreachable_api_keeps_the_cursor(tiny_world: Path, tmp_path: Path, capsys) -> None:
    with _serve(tiny_world, tmp_path / "all") as server:
        cursor = _tick(server.url, None).cursor
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = _tick(down, cursor)
    assert result.run_requests == []
    assert json.loads(result.cursor) == json.loads(cursor)
    assert "search failed for ['beauce', 'lombardy']" in result.skip_reason.skip_message
    logged = capsys.readouterr().err
    assert "does not answer" in logged and "next tick tries again" in logged
    # The API is back: nothing was lost and nothing runs twice.
    with _serve(tiny_world, tmp_path / "back") as server:
        assert _tick(server.url, result.cursor).run_requests == []


@pytest.mark.parametrize("ids", [["b", "a"], ["a", "b"]])
def test_digest_ignores_order(ids: list[str]) -> None:
    assert items_digest(ids) == items_digest(["a", "b"])


def test_replay_polls_nothing() -> None:
    resources = {"stac": StacApi(endpoint="http://127.0.0.1:9", replay=True)}
    with dg.build_sensor_context(cursor="{}", resources=resources) as context:
        result = new_scenes(context)
    assert not result.run_requests and "stac.replay" in result.skip_reason.skip_message
    assert result.cursor is None  # the cursor is kept as it was
