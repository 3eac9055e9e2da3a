"""`dagster-webserver -w workspace.yaml` serves the code location and its asset graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.assets.demo_chain import graphql, webserver

# A whole chain, a server or a cluster: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.slow

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
        "material_embeddings": "inference",
        "change_maps": "inference",
    }
