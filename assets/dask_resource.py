"""The dask.distributed cluster assets compute on: a LocalCluster per step, or a running one."""

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import dagster as dg
from distributed import Client, LocalCluster
from pydantic import PrivateAttr


class DaskCluster(dg.ConfigurableResource):
    """A ``distributed.Client`` for the life of a step, closed when the step ends or fails.

    With ``address`` empty (the default) the step starts a LocalCluster sized to the machine:
    threads in the step's own process by default (``processes: false``), which start in well
    under a second and share the GDAL cache, or ``n_workers`` worker processes, each capped at
    ``memory_limit``. With ``address`` (``tcp://scheduler:8786``) the step joins that running
    scheduler instead and leaves it running. While the resource is in use its client is dask's
    default scheduler, so pipeline code computes on it without knowing about it.
    """

    address: str = ""
    processes: bool = False
    n_workers: int = 1
    threads_per_worker: int = 0
    memory_limit: str = "auto"
    connect_timeout_s: float = 30.0
    _client: Client | None = PrivateAttr(default=None)

    @property
    def client(self) -> Client:
        """The step's client (only while the resource is in use)."""
        if self._client is None:
            raise RuntimeError("DaskCluster.client is only available while the resource is in use")
        return self._client

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["DaskCluster"]:
        with ExitStack() as stack:
            if self.address:
                try:
                    client = Client(self.address, timeout=self.connect_timeout_s)
                except OSError as err:
                    raise ConnectionError(
                        f"cannot reach the dask scheduler at dask.address={self.address!r} "
                        f"({err}); start it, correct the address, or leave the address empty "
                        "for a LocalCluster"
                    ) from err
                stack.callback(client.close)
                context.log.info(f"dask: joined the scheduler at {self.address}")
            else:
                threads = self.threads_per_worker or max(
                    1, (os.cpu_count() or 1) // max(1, self.n_workers)
                )
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=self.n_workers,
                        threads_per_worker=threads,
                        processes=self.processes,
                        memory_limit=self.memory_limit,
                        dashboard_address=None,
                    )
                )
                client = stack.enter_context(Client(cluster))
                context.log.info(
                    f"dask: LocalCluster of {self.n_workers} worker(s) x {threads} thread(s), "
                    f"{'processes' if self.processes else 'threads'}, memory limit "
                    f"{self.memory_limit}"
                )
            self._client = client
            try:
                yield self
            finally:
                self._client = None
