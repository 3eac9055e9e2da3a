"""Sensor: poll the STAC API for new Sentinel-2 scenes and request runs for their partitions.

Each tick searches every configured region over the latest complete time spans (``sensor:
lookback_windows`` of them, so that scenes published late are still seen) and requests a
`patch_dataset` run for each region x time partition whose set of items changed since the last
tick. The cursor keeps, per partition, the number of items and a digest of their ids: a bounded
record however long the archive grows, and an item already processed never requests a run
again. A region whose search fails (API unreachable, server error after the retries) is logged
and left out of the tick; its cursor entries are kept, so the next tick tries it again and misses
nothing.
"""

import hashlib
import json
from collections import defaultdict
from datetime import UTC, datetime

import dagster as dg

from assets.jobs import patch_dataset
from assets.partitions import CONFIG, REGION_TIMES
from assets.resources import StacApi
from pipelines.stac import EmptySearchError, StacSearchError, search_items

# A sensor tick must stay short: one retry against a failing API, the next tick tries again.
SENSOR_RETRIES = 1


def items_digest(ids: list[str]) -> str:
    """A short, order-independent fingerprint of a set of item ids."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def complete_times(now: datetime) -> list[str]:
    """Keys of the latest ``lookback_windows`` complete time spans at ``now``, oldest first."""
    times = REGION_TIMES.get_partitions_def_for_dimension("time")
    keys = times.get_partition_keys(current_time=now)
    return keys[-CONFIG.sensor.lookback_windows :]


def items_by_time(items: list[dict], times: list[str]) -> dict[str, list[str]]:
    """Item ids grouped by the time span (its partition key) their acquisition falls in."""
    partitions = REGION_TIMES.get_partitions_def_for_dimension("time")
    spans = {key: partitions.time_window_for_partition_key(key) for key in times}
    grouped: dict[str, list[str]] = defaultdict(list)
    for item in items:
        acquired = datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))
        for key, span in spans.items():
            if span.start <= acquired < span.end:
                grouped[key].append(item["id"])
    return grouped


@dg.sensor(
    job=patch_dataset,
    minimum_interval_seconds=CONFIG.sensor.interval_s,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="New Sentinel-2 L2A scenes over a configured region: re-run its partition.",
)
def new_scenes(context: dg.SensorEvaluationContext, stac: StacApi) -> dg.SensorResult:
    if stac.replay:
        return dg.SensorResult(skip_reason="stac.replay is on: no STAC API is polled")
    seen: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
    times = complete_times(datetime.now(tz=UTC))
    if not times:
        return dg.SensorResult(skip_reason="no complete time span yet")
    spans = REGION_TIMES.get_partitions_def_for_dimension("time")
    start = spans.time_window_for_partition_key(times[0]).start
    end = spans.time_window_for_partition_key(times[-1]).end
    run_requests, failed = [], []
    for region in CONFIG.regions:
        request = stac.request(region, start, end, max_retries=SENSOR_RETRIES)
        try:
            items = search_items(request)
        except EmptySearchError:
            items = []
        except StacSearchError as err:
            context.log.warning(f"region {region.name}: {err} The next tick tries again.")
            failed.append(region.name)
            continue
        for time, ids in items_by_time(items, times).items():
            key = dg.MultiPartitionKey({"region": region.name, "time": time})
            digest = items_digest(ids)
            if seen.get(str(key), {}).get("digest") == digest:
                continue
            before = seen.get(str(key), {}).get("items", 0)
            seen[str(key)] = {"items": len(ids), "digest": digest}
            run_requests.append(
                dg.RunRequest(
                    run_key=f"{key}:{digest}",
                    partition_key=key,
                    tags={"matter/items": str(len(ids)), "matter/items_before": str(before)},
                )
            )
    skip = None
    if not run_requests:
        skip = "no new scenes" + (f"; search failed for {failed}" if failed else "")
    return dg.SensorResult(
        run_requests=run_requests, cursor=json.dumps(seen, sort_keys=True), skip_reason=skip
    )
