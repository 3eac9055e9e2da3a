"""The Dagster code location: every asset, job, schedule and resource of the MATTER chain.

The environment comes from the project configuration (``MATTER_CONFIG``, default the embedded
demo world): the endpoint, the regions (partitions) and the storage root.
"""

from __future__ import annotations

import dagster as dg

from assets import checks, evaluation, imagery, inference, model, patches
from assets.dask_resource import DaskCluster
from assets.executors import executor_from_env
from assets.jobs import dataset_refresh, matter_chain, patch_dataset, pretrain_and_evaluate
from assets.k8s import pipes_client
from assets.partitions import CONFIG
from assets.resources import DataStore, StacApi
from assets.sensors import new_scenes

_store = DataStore(root=CONFIG.storage.root)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([imagery, patches, model, evaluation, inference]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[matter_chain, patch_dataset, pretrain_and_evaluate],
    schedules=[dataset_refresh],
    sensors=[new_scenes],
    resources={
        "store": _store,
        "stac": StacApi(
            endpoint=CONFIG.stac.endpoint,
            demo_world_root=str(_store.demo_world),
            demo_world_spec=CONFIG.stac.demo_world_spec,
            collection=CONFIG.stac.collection,
            max_cloud_cover=CONFIG.stac.max_cloud_cover,
            replay=CONFIG.stac.replay,
        ),
        "pipes": pipes_client(CONFIG.training, _store.path()),
        "dask_cluster": DaskCluster(**CONFIG.dask.model_dump()),
    },
    executor=executor_from_env(),
)
