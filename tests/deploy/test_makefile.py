"""`make ui` serves the Dagster UI on the loopback interface only: the Makefile is parsed, not
run, so no webserver starts."""

from __future__ import annotations

import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def recipe(target: str, makefile: Path = REPO / "Makefile") -> list[str]:
    """The recipe lines (tab-indented, after ``target:``) of one Makefile rule."""
    lines = makefile.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"{target}:"))
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        body.append(line.strip())
    return body


def bind_host(command: str) -> str | None:
    """The value of ``-h``/``--host`` in a dagster-webserver command line, or None."""
    words = shlex.split(command)
    for flag, value in zip(words, words[1:], strict=False):
        if flag in ("-h", "--host"):
            return value
    return next((w.split("=", 1)[1] for w in words if w.startswith("--host=")), None)


def test_make_ui_binds_the_webserver_to_loopback() -> None:
    commands = [ln for ln in recipe("ui") if "dagster-webserver" in ln]
    assert commands, "`make ui` does not start dagster-webserver"
    for command in commands:
        host = bind_host(command)
        assert host in LOOPBACK, (
            f"`make ui` binds dagster-webserver to {host or 'its default'}: pass -h 127.0.0.1 "
            "so the UI (which can launch runs) is not reachable from the network"
        )


def test_bind_host_reads_both_spellings() -> None:
    assert bind_host("dagster-webserver -w w.yaml -h 0.0.0.0 -p 3000") == "0.0.0.0"
    assert bind_host("dagster-webserver --host=127.0.0.1") == "127.0.0.1"
    assert bind_host("dagster-webserver -p 3000") is None
