"""The project's log messages reach Dagster's event log from an asset that forwards them."""

import logging

import dagster as dg

from assets.logs import forward_project_logs


@dg.asset
def talkative(context: dg.AssetExecutionContext) -> None:
    logging.getLogger("matter_model.somewhere").info("before the block")
    with forward_project_logs(context):
        logging.getLogger("matter_model.somewhere").info("inside %s", "matter_model")
        logging.getLogger("pipelines.elsewhere").warning("inside pipelines")
        logging.getLogger("another_library").warning("not ours")
    logging.getLogger("pipelines.elsewhere").info("after the block")


def test_project_records_in_the_block_reach_the_run_logs() -> None:
    levels = {name: logging.getLogger(name).level for name in ("matter_model", "pipelines")}
    handlers = {name: list(logging.getLogger(name).handlers) for name in levels}
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([talkative], instance=instance)
    assert result.success
    said = {
        entry.user_message: entry.level
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event is None
    }
    assert said.get("inside matter_model") == logging.INFO
    assert said.get("inside pipelines") == logging.WARNING
    assert not {"before the block", "not ours", "after the block"} & set(said)
    assert {name: logging.getLogger(name).level for name in levels} == levels
    assert {name: list(logging.getLogger(name).handlers) for name in levels} == handlers
