"""``python -m tests.faults.run_model KEY...``: the model assets (pretraining through Dagster
Pipes, then the change-detection evaluation), then the inference assets of these partitions, as
`make demo` runs them after the dataset assets."""

from __future__ import annotations

import sys

import dagster as dg

from assets.definitions import defs
from assets.demo import RUN_CONFIG
from assets.jobs import INFERENCE_ASSETS, MODEL_ASSETS


def main(keys: list[str]) -> int:
    """Materialise the model assets, then the inference assets of each partition; 1 at the
    first failure."""
    job = defs.resolve_job_def("matter_chain")
    runs = [(None, MODEL_ASSETS)] + [(key, INFERENCE_ASSETS) for key in keys]
    with dg.DagsterInstance.get() as instance:
        for key, assets in runs:
            result = job.execute_in_process(
                instance=instance,
                partition_key=key,
                asset_selection=[dg.AssetKey(a) for a in assets],
                run_config=RUN_CONFIG,
                raise_on_error=False,
            )
            print(f"{key or 'model'}: {'ok' if result.success else 'FAILED'}", flush=True)
            if not result.success:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
