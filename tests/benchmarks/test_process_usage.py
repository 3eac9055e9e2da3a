"""The benchmark workers' peak memory is their own, not their parent's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
WORKER = (
    "import sys; sys.path.insert(0, sys.argv[1]); import numpy as np;"
    "from process_usage import peak_rss_mb; before = peak_rss_mb();"
    "held = np.ones(int(sys.argv[2]) * 2**20, np.uint8); print(before, peak_rss_mb())"
)


def test_a_worker_reports_its_own_peak_not_its_parents() -> None:
    parent = np.ones(400 * 2**20, np.uint8)  # 400 MiB resident in the parent
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(BENCHMARKS), "100"],
        capture_output=True,
        text=True,
        check=True,
    )
    before, after = map(float, done.stdout.split())
    assert parent.sum() == parent.size
    assert before < 200, "the parent's 400 MiB leaked into the worker's peak"
    assert 90 < after - before < 200  # the 100 MiB the worker touched
