"""The local STAC API process: it must not outlive its owner, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.assets.demo_chain import REPO

# A process that starts the server, prints the server's pid, and waits to be killed.
OWNER = """
import sys, time
from pipelines.stac import StacServer
server = StacServer(sys.argv[1:]).start()
print(server._process.pid, flush=True)
time.sleep(600)
"""
# Some hosts run the owner with SIGTERM ignored (a daemon, a test runner's earlier test).
IGNORING_SIGTERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead: it waits only for its (new) parent to collect it.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
@pytest.mark.parametrize("sigterm", ["default", "ignored"])  # ignored: inherited by the server
def test_the_server_stops_when_its_owner_is_killed(tiny_world: Path, sigterm: str) -> None:
    hrefs = [str(tiny_world / "collection.json"), str(tiny_world / "items.json")]
    code = OWNER if sigterm == "default" else IGNORING_SIGTERM + OWNER
    owner = subprocess.Popen(
        [sys.executable, "-c", code, *hrefs], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    server_pid = int(owner.stdout.readline())
    assert _alive(server_pid)
    owner.send_signal(signal.SIGKILL)  # no cleanup runs in the owner
    owner.wait()
    owner.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(server_pid)
    if alive:
        os.killpg(server_pid, signal.SIGKILL)
    assert not alive, "the STAC server outlived its killed owner"
