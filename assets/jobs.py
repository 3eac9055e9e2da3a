"""Jobs and schedules: the whole chain, the dataset refresh, and pretraining + evaluation."""

from collections.abc import Iterator

import dagster as dg

from assets.partitions import CONFIG, REGION_TIMES

DATASET_ASSETS = ["stac_items", "coregistered_stack", "change_screen", "patch_triplets"]
MODEL_ASSETS = ["matter_pretrained", "change_detection_eval"]
INFERENCE_ASSETS = ["material_embeddings", "change_maps"]

matter_chain = dg.define_asset_job(
    "matter_chain",
    selection=DATASET_ASSETS + MODEL_ASSETS + INFERENCE_ASSETS,
    description="The whole chain: one region x time partition of the dataset, then "
    "pretraining on every materialised partition and the change-detection evaluation, then "
    "the partition's embeddings and change maps.",
)
patch_dataset = dg.define_asset_job(
    "patch_dataset",
    selection=DATASET_ASSETS,
    description="STAC search to anchor / positive / negative patches, per region x time partition.",
)
pretrain_and_evaluate = dg.define_asset_job(
    "pretrain_and_evaluate",
    selection=MODEL_ASSETS,
    description="Pretrain MATTER on every materialised patch shard, then evaluate it.",
)


@dg.schedule(
    cron_schedule="0 3 2 1,4,7,10 *",
    job=patch_dataset,
    description="Dataset refresh: the newest complete time window of every region.",
)
def dataset_refresh(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
    times = REGION_TIMES.get_partitions_def_for_dimension("time")
    keys = times.get_partition_keys(current_time=context.scheduled_execution_time)
    if not keys:
        return
    latest = keys[-1]
    for region in CONFIG.regions:
        key = dg.MultiPartitionKey({"region": region.name, "time": latest})
        yield dg.RunRequest(run_key=f"{key}", partition_key=key)
