"""No secret from the environment shows in anything a run writes: the session's demo run gets
fake values of every deployment secret (``FAKE_SECRETS``), and its stdout and stderr, its Dagster
home (the event log, run and schedule storage, compute logs) and the data store (items, stacks,
metadata, the report) are searched for them, SQLite databases row by row."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.assets.demo_chain import FAKE_SECRETS

SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlite_text(path: Path) -> bytes:
    """Every value of every table of a SQLite database, so that a string split across the
    database's overflow pages is still found whole."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [repr(row) for t in tables for row in db.execute(f'SELECT * FROM "{t}"')]
    return "\n".join(rows).encode()


def written_text(root: Path) -> Iterator[tuple[Path, bytes]]:
    """(file, its bytes) for every file under ``root``; a SQLite file's rows are added."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield path, data
        if data.startswith(SQLITE_MAGIC):
            yield path, sqlite_text(path)


def leaks(root: Path, secrets: dict[str, str]) -> list[str]:
    """``file: NAME`` for each secret value found in a file under ``root``."""
    found = []
    for path, data in written_text(root):
        found += [f"{path}: {n}" for n, v in secrets.items() if v.encode() in data]
    return sorted(set(found))


def test_the_scan_finds_a_secret_in_a_file_and_a_sqlite_row(tmp_path: Path) -> None:
    (tmp_path / "log.txt").write_text("key=fake-value-1")
    with sqlite3.connect(tmp_path / "events.db") as db:
        db.execute("CREATE TABLE event_logs (event TEXT)")
        db.execute("INSERT INTO event_logs VALUES (?)", ("x" * 9000 + "fake-value-2",))
    db.close()
    secrets = {"A": "fake-value-1", "B": "fake-value-2", "C": "absent"}
    assert leaks(tmp_path, secrets) == [
        f"{tmp_path / 'events.db'}: B",
        f"{tmp_path / 'log.txt'}: A",
    ]


@pytest.mark.slow
def test_no_secret_of_the_environment_is_written_by_the_demo_run(demo_run) -> None:
    tmp, _, _ = demo_run
    assert (tmp / "demo.stdout").exists() and (tmp / "dagster_home").is_dir()
    sqlite_files = [p for p, d in written_text(tmp) if d.startswith(SQLITE_MAGIC)]
    assert sqlite_files, "the run wrote no SQLite storage: the scan would miss the event log"
    found = leaks(tmp, FAKE_SECRETS)
    assert not found, "secrets from the environment were written:\n" + "\n".join(found)
