"""The executor of every job, chosen by ``MATTER_EXECUTOR``: one machine, Dask, or Kubernetes.

- ``multiprocess`` (default): each step a process on the machine of the run.
- ``dask``: steps on a Dask cluster (dagster-dask); the run config's ``execution.config.cluster``
  says which: ``local`` (a LocalCluster) or ``existing`` (a scheduler address), see
  ``docker/dask/``.
- ``k8s``: each step a Kubernetes Job (dagster-k8s ``k8s_job_executor``), see ``docker/k8s/``.
"""

import os

import dagster as dg
from dagster_dask import dask_executor
from dagster_k8s import k8s_job_executor

EXECUTORS: dict[str, dg.ExecutorDefinition] = {
    "multiprocess": dg.multi_or_in_process_executor,
    "dask": dask_executor,
    "k8s": k8s_job_executor,
}


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor named by ``MATTER_EXECUTOR``; an unknown name is an error listing the known."""
    name = os.environ.get("MATTER_EXECUTOR") or "multiprocess"
    if name not in EXECUTORS:
        raise ValueError(
            f"MATTER_EXECUTOR={name!r} is not an executor; use one of {sorted(EXECUTORS)} "
            "or leave it unset for multiprocess on this machine"
        )
    return EXECUTORS[name]
