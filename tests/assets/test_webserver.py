"""`dagster-webserver -w workspace.yaml` serves the code location and its asset graph."""

from __future__ import annotations

from pathlib import Path

from tests.assets.demo_chain import graphql, webserver

QUERY = "{ assetNodes { assetKey { path } groupName } }"


def test_webserver_serves_the_asset_graph(tmp_path: Path) -> None:
    with webserver(tmp_path) as url:
        nodes = graphql(url, QUERY)["data"]["assetNodes"]
    groups = {node["assetKey"]["path"][0]: node["groupName"] for node in nodes}
    assert groups == {
        "stac_items": "imagery",
        "coregistered_stack": "imagery",
        "change_screen": "patches",
        "patch_triplets": "patches",
        "matter_pretrained": "model",
        "change_detection_eval": "evaluation",
    }
