"""Disk full while a stack, a shard and a checkpoint are written over an older version.

The writer runs in a subprocess whose file size is capped (``RLIMIT_FSIZE``, with SIGXFSZ
ignored, so a write past the cap fails with EFBIG as on a full disk). Expected: the writer
fails with an error saying the file is too large, naming the file or folder being written and
what to do (free space, or write elsewhere), the previous version is intact byte for byte, and a
write without the cap then succeeds and leaves no hidden temporary file. (A failed zarr
write can leave its hidden folder: zarr's writer threads still running when the error reaches
``atomic_directory`` recreate files in it after its removal; the next write into the folder
removes it. The rows count how often that happened.)
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

from tests.assets.demo_chain import REPO
from tests.faults.outcome import FaultRow
from tests.faults.outputs import digests, leftovers

LIMITS = (256 * 1024, 768 * 1024)  # bytes per file: above version 1's files, below version 2's
TARGETS = {"stack": "stack.zarr", "shard": "store", "checkpoint": "checkpoint.pt"}


def _capped(limit: int | None):
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def write(kind: str, target: Path, version: int, limit: int | None) -> subprocess.CompletedProcess:
    """Run the writer of ``kind`` for ``version`` under a file-size cap of ``limit`` bytes."""
    args = [sys.executable, "-m", "tests.faults.disk_full_writer", kind, str(target), str(version)]
    return subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=_capped(limit)
    )


# What asyncio prints at exit about zarr's writer tasks the error aborted: it follows the
# traceback, so the error the user sees is the last line before it.
EXIT_NOISE = ("Task was destroyed but it is pending!", "Future exception was never retrieved")


def _error_line(stderr: str) -> str:
    """The last line of the traceback in ``stderr``, before asyncio's exit-time warnings."""
    for marker in EXIT_NOISE:
        stderr = stderr.split(marker, 1)[0]
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def disk_full(tmp: Path) -> list[FaultRow]:
    """One row per kind of file, each written under every cap of :data:`LIMITS`."""
    rows = []
    for kind, name in TARGETS.items():
        row = FaultRow(f"disk full while a {kind} is written", "")
        left_by_failure = 0
        for limit in LIMITS:
            folder = tmp / f"{kind}-{limit}"
            target = folder / name
            first = write(kind, target, 1, None)
            if first.returncode != 0:
                raise RuntimeError(f"writing version 1 of a {kind} failed: {first.stderr[-2000:]}")
            before = digests(folder)
            failed = write(kind, target, 2, limit)
            said = _error_line(failed.stderr)
            clear = (
                failed.returncode != 0
                and "File too large" in said
                and f"while writing {folder}/" in said
                and "Free space" in said
            )
            kept = digests(folder) == before
            left_by_failure += bool(leftovers(folder))
            again = write(kind, target, 2, None)
            left = leftovers(folder)
            row.record(
                clear and kept and not left and again.returncode == 0,
                data_lost=not kept,
                why=f"cap {limit} B: exit {failed.returncode}, said {said!r}; old version intact "
                f"{kept}; leftovers {left}; uncapped rewrite exit {again.returncode}",
            )
            if clear:
                said = said.replace(str(folder), "<folder>")
                row.what_the_user_sees = f"the write fails: {said[:400]}; the old {kind} stays"
        if left_by_failure:
            row.what_the_user_sees += (
                f" ({left_by_failure} of {len(LIMITS)} failed writes left a hidden folder, "
                "removed by the next write)"
            )
        rows.append(row)
    return rows
