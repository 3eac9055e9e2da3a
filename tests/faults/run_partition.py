"""``python -m tests.faults.run_partition KEY...``: the dataset assets of these partitions only,
as `make demo` runs each of them, so a kill lands inside a step within seconds, not minutes."""

from __future__ import annotations

import sys

import dagster as dg

from assets.definitions import defs
from assets.demo import RUN_CONFIG
from assets.jobs import DATASET_ASSETS


def main(keys: list[str]) -> int:
    """Materialise the dataset assets of each partition in turn; 1 at the first failure."""
    job = defs.resolve_job_def("matter_chain")
    with dg.DagsterInstance.get() as instance:
        for key in keys:
            result = job.execute_in_process(
                instance=instance,
                partition_key=key,
                asset_selection=[dg.AssetKey(a) for a in DATASET_ASSETS],
                run_config=RUN_CONFIG,
                raise_on_error=False,
            )
            print(f"partition {key}: {'ok' if result.success else 'FAILED'}", flush=True)
            if not result.success:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
