"""``python -m tests.faults.run_partition KEY...``: the dataset assets of these partitions only,
as `make demo` runs each of them, so a kill lands inside a step within seconds, not minutes."""

from __future__ import annotations

import sys

import dagster as dg

from assets.definitions import defs
from assets.demo import run_partitions
from assets.jobs import DATASET_ASSETS


def main(keys: list[str]) -> int:
    """Materialise the dataset assets of each partition in turn; 1 at the first failure."""
    with dg.DagsterInstance.get() as instance:
        failed = run_partitions(
            defs.resolve_job_def("matter_chain"), instance, DATASET_ASSETS, keys
        )
    return 0 if failed is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
