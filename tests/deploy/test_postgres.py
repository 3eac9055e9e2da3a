"""Dagster on a real PostgreSQL server with the deployment's docker/dagster.yaml: the first two
assets of the dataset job run for two partitions of the tiny demo world, and the runs and the
materialisations are read back from the database.

Needs a server: DAGSTER_PG_HOST, DAGSTER_PG_PORT, DAGSTER_PG_USER, DAGSTER_PG_PASSWORD and
DAGSTER_PG_DB of a role that may create databases (`. tests/deploy/start_postgres.sh` starts one
and exports them; .ci/run does). Each test run works in a database of its own, dropped after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from psycopg2 import sql

from tests.assets.demo_chain import tiny_config
from tests.deploy.code_location import REPO

# A whole chain, a server or a cluster: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.slow

SETTINGS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD")
PARTITIONS = ["beauce|2024-07-01", "lombardy|2024-07-01"]
ASSETS = ["stac_items", "coregistered_stack"]


def _connect(database: str) -> psycopg2.extensions.connection:
    connection = psycopg2.connect(
        host=os.environ["DAGSTER_PG_HOST"],
        port=int(os.environ["DAGSTER_PG_PORT"]),
        user=os.environ["DAGSTER_PG_USER"],
        password=os.environ["DAGSTER_PG_PASSWORD"],
        dbname=database,
        connect_timeout=5,
    )
    connection.autocommit = True
    return connection


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A fresh database on the configured server, dropped afterwards; skips without a server."""
    missing = [name for name in SETTINGS if not os.environ.get(name)]
    if missing:
        pytest.skip(
            f"no PostgreSQL server configured ({', '.join(missing)} unset): "
            "`. tests/deploy/start_postgres.sh` starts one and exports them"
        )
    try:
        admin = _connect(os.environ.get("DAGSTER_PG_DB", "postgres"))
    except psycopg2.OperationalError as error:
        host = os.environ["DAGSTER_PG_HOST"]
        pytest.skip(f"the PostgreSQL server at {host} is unreachable: {error}")
    name = f"matter_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture
def deployment_home(postgres_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME holding the deployment's docker/dagster.yaml, over the fresh database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "docker" / "dagster.yaml", home / "dagster.yaml")
    for key, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_DB": postgres_db,
        "DAGSTER_MAX_CONCURRENT_RUNS": "1",
        "DAGSTER_COMPUTE_LOG_DIR": str(tmp_path / "compute_logs"),
    }.items():
        monkeypatch.setenv(key, value)
    return home


def _dagster(*args: str) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), *args, "-m", "assets.definitions"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_runs_and_materialisations_of_two_partitions_live_in_postgres(
    deployment_home: Path, postgres_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MATTER_CONFIG", str(tiny_config(tmp_path)))
    for partition in PARTITIONS:
        _dagster("asset", "materialize", "--select", ",".join(ASSETS), "--partition", partition)

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        runs = instance.get_runs()
        assert sorted(run.tags["dagster/partition"] for run in runs) == PARTITIONS
        assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}
        for asset in ASSETS:
            key = dg.AssetKey(asset)
            assert instance.get_materialized_partitions(key) == set(PARTITIONS), asset
            records = instance.fetch_materializations(key, limit=10).records
            partition_of_run = {run.run_id: run.tags["dagster/partition"] for run in runs}
            assert sorted(
                (partition_of_run[r.run_id], r.asset_materialization.partition) for r in records
            ) == [(p, p) for p in PARTITIONS]
        # The steps' stdout/stderr went to the compute-log directory of the deployment.
        logs = tmp_path / "compute_logs"
        assert any(logs.rglob("*.err")) or any(logs.rglob("*.out"))

    # The same records, straight from the database: nothing was kept on local disk instead.
    with closing(_connect(postgres_db)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cursor.fetchone()[0] == len(PARTITIONS)
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        assert cursor.fetchone()[0] == len(PARTITIONS) * len(ASSETS)
    assert not (deployment_home / "history").exists()


def test_a_backfill_is_queued_one_run_per_partition_within_the_backfill_limit(
    deployment_home: Path,
) -> None:
    partitions = ",".join(PARTITIONS)
    _dagster("job", "backfill", "-j", "patch_dataset", "--noprompt", "--partitions", partitions)
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert sorted(run.tags["dagster/partition"] for run in runs) == PARTITIONS
        assert {run.status for run in runs} == {dg.DagsterRunStatus.QUEUED}  # for the daemon
        assert len({run.tags["dagster/backfill"] for run in runs}) == 1
        queue = instance.run_coordinator.get_run_queue_config()
        assert queue.max_concurrent_runs == 1  # DAGSTER_MAX_CONCURRENT_RUNS
        (limit,) = queue.tag_concurrency_limits
        assert (limit["key"], limit["limit"]) == ("dagster/backfill", 2)
