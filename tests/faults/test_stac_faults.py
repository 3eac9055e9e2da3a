"""The STAC faults of the suite (``benchmarks/faults.py``): every one retried or named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.stac import stac_faults

# A server per fault, about half a minute in all.
pytestmark = pytest.mark.slow


def test_every_stac_fault_is_retried_or_named(tiny_world: Path) -> None:
    rows = stac_faults(tiny_world)
    assert len(rows) >= 10
    for row in rows:
        assert row.injected > 0, row.fault
        assert (row.survived, row.data_lost) == (row.injected, 0), (row.fault, row.failures)
