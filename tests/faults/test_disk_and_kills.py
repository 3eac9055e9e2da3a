"""Disk full while writing, and kill -9 during training: the suite's quicker families, smaller."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.disk_full import disk_full
from tests.faults.kills import training_kills

# Subprocesses under a file-size cap, and killed processes.
pytestmark = pytest.mark.slow


def test_disk_full_keeps_the_previous_version(tmp_path: Path) -> None:
    for row in disk_full(tmp_path):
        assert (row.survived, row.data_lost) == (row.injected, 0), (row.fault, row.failures)
        assert "File too large while writing <folder>/" in row.what_the_user_sees
        assert "Free space there" in row.what_the_user_sees


def test_training_killed_three_times_resumes_to_the_same_weights(tmp_path: Path) -> None:
    row = training_kills(tmp_path, kills=3, seed=1)
    assert (row.injected, row.survived, row.data_lost) == (3, 3, 0), row.failures
