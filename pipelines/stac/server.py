"""A real STAC API on 127.0.0.1 (`rustac serve`, memory backend) for local collections.

The demo world and tests go through the same HTTP search code path as Earth Search. The server
runs in its own process group, so stopping it (or the end of the owning process's context)
leaves no process behind; on Linux it is also told to stop when its owner dies, so a run killed
with SIGKILL (which runs no cleanup) does not leave it serving.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType


class StacServerError(RuntimeError):
    """The local STAC API could not be started."""


def _rustac_executable() -> str:
    beside_python = Path(sys.executable).with_name("rustac")
    found = str(beside_python) if beside_python.exists() else shutil.which("rustac")
    if not found:
        raise StacServerError(
            "the `rustac` command is not installed; run `make install` (it comes with the "
            "`rustac` Python package)"
        )
    return found


_PR_SET_PDEATHSIG = 1  # prctl(2): the signal the calling process gets when its parent dies


def _stop_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child get SIGTERM when its parent dies (Linux), else None.

    The child also gets SIGTERM's default action back: an ignored signal stays ignored across
    fork and exec, so a server started by a process that ignores SIGTERM would outlive it (and
    sit out ``stop``'s grace period). libc is loaded here, before the fork: the child only makes
    the two calls."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    sigterm, death_signal = ctypes.c_int(signal.SIGTERM), ctypes.c_ulong(signal.SIGTERM)
    default_action = ctypes.c_void_p(0)  # SIG_DFL

    def preexec() -> None:
        libc.signal(sigterm, default_action)
        libc.prctl(_PR_SET_PDEATHSIG, death_signal)

    return preexec


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StacServer:
    """`rustac serve` over the given collection / item-collection files, as a context manager.

    >>> with StacServer(["collection.json", "items.json"]) as server:
    ...     search_items(SearchRequest(url=server.url, ...))
    """

    def __init__(self, hrefs: list[str | Path], startup_timeout_s: float = 30.0) -> None:
        missing = [str(h) for h in hrefs if not Path(h).exists()]
        if missing:
            raise StacServerError(f"cannot serve missing files: {missing}")
        self.hrefs = [str(Path(h).resolve()) for h in hrefs]
        self.startup_timeout_s = startup_timeout_s
        self.url = ""
        self._process: subprocess.Popen | None = None

    def start(self) -> StacServer:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._process = subprocess.Popen(
            [_rustac_executable(), "serve", "--addr", f"127.0.0.1:{port}", *self.hrefs],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_stop_with_parent(),  # noqa: PLW1509 (one prctl call, no lock taken)
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                raise StacServerError(f"`rustac serve` exited at start-up: {stderr.strip()}")
            try:
                with urllib.request.urlopen(self.url, timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.stop()
        raise StacServerError(
            f"`rustac serve` did not answer on {self.url} within {self.startup_timeout_s:.0f} s"
        )

    def stop(self) -> None:
        """Stop the server's process group; safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except ProcessLookupError:
            pass
        finally:
            if process.stderr:
                process.stderr.close()

    def __enter__(self) -> StacServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
