"""Running the project as a user does, for the asset tests: a project config over the tiny demo
world, commands run against it, and `dagster-webserver` serving an instance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from pipelines.demo_world import TINY_SPEC, generate_demo_world
from pipelines.stac.server import free_port

REPO = Path(__file__).resolve().parents[2]
# Fake values of every secret the deployment passes in the environment: the session's demo run
# gets them, and tests/assets/test_secrets.py checks that none shows in anything the run wrote.
FAKE_SECRETS = {
    "PC_SDK_SUBSCRIPTION_KEY": "fake-pc-key-9c41e7b2d0a3",
    "AWS_ACCESS_KEY_ID": "AKIAFAKE9C41E7B2D0A3",
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-5b8f2e61c7d4/9a0e",
    "AWS_SESSION_TOKEN": "fake-aws-session-token-3e7d1c9b5a28",
    "DAGSTER_PG_PASSWORD": "fake-pg-password-6a2f8d4c0e17",
}


def tiny_config(tmp: Path, **changes) -> Path:
    """A project config over the tiny demo world, written to ``tmp/config.yaml``."""
    manifest = generate_demo_world(tmp / "data" / "demo_world", TINY_SPEC)
    config = yaml.safe_load((REPO / "assets" / "demo.yaml").read_text())
    config["stac"]["demo_world_spec"] = "tiny"
    config["regions"] = [{"name": r["name"], "bbox": r["bbox"]} for r in manifest["regions"]]
    config["storage"]["root"] = str(tmp / "data")
    config["training"]["overrides"] = {
        "steps": 3,
        "batch_size": 4,
        "num_workers": 0,
        "checkpoint_every": 2,
    }
    config["evaluation"]["oscd_root"] = None
    # The tiny world has nine 32 px windows per partition, some cloudy, and its fields change
    # with the season between dates: at the demo's 0.5 nearly none stays "unchanged", so the
    # chain would have no triplet to train on. A looser screen keeps a few per partition.
    config["screen"]["threshold"] = 1.5
    for section, values in changes.items():
        config[section] = (
            {**config.get(section, {}), **values} if isinstance(values, dict) else values
        )
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_in(
    args: list[str], config: Path, tmp: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``args`` with the config and a Dagster home under ``tmp``, plus ``extra_env``."""
    home = tmp / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        **(extra_env or {}),
        "MATTER_CONFIG": str(config),
        "DAGSTER_HOME": str(home),
    }
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def rustac_servers(serving: Path) -> list[str]:
    """Command lines of the `rustac serve` processes serving files under ``serving``."""
    out = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "rustac serve" in line and str(serving) in line]


def graphql(url: str, query: str) -> dict:
    """POST a GraphQL query to a running webserver and return its JSON answer."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@contextmanager
def webserver(home: Path, config: Path | None = None, timeout_s: float = 120) -> Iterator[str]:
    """`dagster-webserver -w workspace.yaml` on a free port of 127.0.0.1; yields its URL once
    it serves the asset graph, and stops it (SIGINT to its own session) afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    if config is not None:
        env["MATTER_CONFIG"] = str(config)
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver"))]
        + ["-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # it ignores SIGTERM in the background: stopped with SIGINT
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if graphql(url, "{ assetNodes { id } }")["data"]["assetNodes"]:
                    break
            except (urllib.error.URLError, ConnectionError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the webserver did not serve the asset graph in {timeout_s} s"
                )
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
