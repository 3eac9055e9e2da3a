"""``python -m tests.faults.run_model KEY...``: the model assets (pretraining through Dagster
Pipes, then the change-detection evaluation), then the inference assets of these partitions, as
`make demo` runs them after the dataset assets."""

from __future__ import annotations

import sys

import dagster as dg

from assets.definitions import defs
from assets.demo import run_assets, run_partitions
from assets.jobs import INFERENCE_ASSETS, MODEL_ASSETS


def main(keys: list[str]) -> int:
    """Materialise the model assets, then the inference assets of each partition; 1 at the
    first failure."""
    job = defs.resolve_job_def("matter_chain")
    with dg.DagsterInstance.get() as instance:
        if not run_assets(job, instance, MODEL_ASSETS).success:
            return 1
        return 0 if run_partitions(job, instance, INFERENCE_ASSETS, keys) is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
