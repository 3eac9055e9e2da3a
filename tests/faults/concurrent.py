"""Two runs materialising the same partition at once, on one storage root and one instance.

Expected: both succeed, or one fails with a clear error while the other succeeds; either way the
partition's outputs end byte-identical to those of a single run (each writer replaces whole
files and folders atomically, so nothing of the two is interleaved) and no hidden temporary
file is left.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from tests.assets.demo_chain import tiny_config
from tests.faults.kills import _chain_env, finish, start
from tests.faults.outcome import FaultRow
from tests.faults.outputs import differences, digests, leftovers

PARTITION = "lombardy|2024-07-01"


def concurrent_runs(tmp: Path, trials: int, seed: int) -> FaultRow:
    """``trials`` pairs of runs of one partition, the second started 0 to 10 s after the first."""
    row = FaultRow("two runs materialise the same partition at once", "")
    config = tiny_config(tmp)
    args = [sys.executable, "-m", "tests.faults.run_partition", PARTITION]
    error = finish(start(args, _chain_env(tmp, config)))
    if error:
        raise RuntimeError(f"the single run failed: {error}")
    expected = digests(tmp / "data")
    rng = random.Random(seed)
    outcomes = []
    for trial in range(trials):
        offset = 0.0 if trial == 0 else rng.uniform(0.5, 10.0)
        first = start(args, _chain_env(tmp, config))
        time.sleep(offset)
        second = start(args, _chain_env(tmp, config))
        errors = [finish(first), finish(second)]
        changed = differences(expected, digests(tmp / "data"))
        left = leftovers(tmp / "data")
        succeeded = sum(not e for e in errors)
        row.record(
            succeeded >= 1 and not changed and not left,
            data_lost=bool(changed),
            why=f"second started {offset:.1f} s later: {succeeded} of 2 succeeded "
            f"({[e[-300:] for e in errors if e]}); {len(changed)} outputs differ "
            f"{changed[:5]}; leftovers {left[:5]}",
        )
        outcomes.append(succeeded)
    row.what_the_user_sees = (
        f"runs that both succeeded: {outcomes.count(2)} of {trials}; the partition's files equal "
        "a single run's"
    )
    return row
