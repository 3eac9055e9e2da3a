"""`make demo`: run the whole chain on the embedded default and name the report it wrote.

Runs the `matter_chain` job the way a backfill would: the dataset assets once per region x
time partition, then pretraining and evaluation over every materialised partition, then the
embeddings and change maps of each partition with the pretrained model. Runs are
recorded in the Dagster instance at $DAGSTER_HOME, so `make ui` shows them afterwards.
"""

from __future__ import annotations

import sys
import time

import dagster as dg

from assets.definitions import defs
from assets.jobs import DATASET_ASSETS, INFERENCE_ASSETS, MODEL_ASSETS
from assets.partitions import REGION_TIMES

# Step logs at INFO: the training progress and each step's outcome, without Dagster's DEBUG events.
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def run_assets(
    job: dg.JobDefinition, instance: dg.DagsterInstance, assets: list[str], key: str | None = None
) -> dg.ExecuteInProcessResult:
    """One run of ``assets`` (of partition ``key``, or unpartitioned), its outcome printed."""
    started = time.monotonic()
    result = job.execute_in_process(
        instance=instance,
        partition_key=key,
        asset_selection=[dg.AssetKey(a) for a in assets],
        run_config=RUN_CONFIG,
        raise_on_error=False,
    )
    print(
        f"{f'partition {key}' if key else 'unpartitioned'} ({', '.join(assets)}): "
        f"{'ok' if result.success else 'FAILED'} ({time.monotonic() - started:.1f} s)",
        flush=True,
    )
    return result


def run_partitions(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    assets: list[str],
    keys: list[str] | None = None,
) -> dg.ExecuteInProcessResult | None:
    """``assets`` for each of ``keys`` (every partition by default) in turn; the first failed
    run, or None when all succeed."""
    for key in REGION_TIMES.get_partition_keys() if keys is None else keys:
        result = run_assets(job, instance, assets, key)
        if not result.success:
            return result
    return None


def run_chain(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Every partition of the dataset assets, then the model assets, then every partition of
    the inference assets; stops at the first failure. Returns the model assets' run (or the
    failed one)."""
    job = defs.resolve_job_def("matter_chain")
    failed = run_partitions(job, instance, DATASET_ASSETS)
    if failed is not None:
        return failed
    result = run_assets(job, instance, MODEL_ASSETS)
    if not result.success:
        return result
    return run_partitions(job, instance, INFERENCE_ASSETS) or result


def main() -> int:
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        result = run_chain(instance)
    if not result.success:
        print("the demo failed; the run's log above names the step and the cause", file=sys.stderr)
        return 1
    report = result.asset_materializations_for_node("change_detection_eval")[0]
    print(f"demo finished in {time.monotonic() - started:.0f} s")
    print(f"report: {report.metadata['report'].value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
