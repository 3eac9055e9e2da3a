"""`dagster-webserver -w workspace.yaml` serves the code location and its asset graph."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipelines.stac.server import free_port

REPO = Path(__file__).resolve().parents[2]
QUERY = "{ assetNodes { assetKey { path } groupName } }"


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_webserver_serves_the_asset_graph(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    webserver = str(Path(sys.executable).with_name("dagster-webserver"))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    # Its own session, stopped with SIGINT: the webserver ignores SIGTERM in the background.
    process = subprocess.Popen(
        [webserver, "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        nodes = None
        while time.monotonic() < deadline and nodes is None:
            try:
                data = _graphql(url, QUERY)["data"]["assetNodes"]
                nodes = data or None
            except (urllib.error.URLError, ConnectionError, KeyError, TypeError):
                time.sleep(1)
        assert nodes, "the webserver did not serve the asset graph within 120 s"
        groups = {node["assetKey"]["path"][0]: node["groupName"] for node in nodes}
        assert groups == {
            "stac_items": "imagery",
            "coregistered_stack": "imagery",
            "change_screen": "patches",
            "patch_triplets": "patches",
            "matter_pretrained": "model",
            "change_detection_eval": "evaluation",
        }
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
