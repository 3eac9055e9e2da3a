"""CPU time and peak memory of the running process, for benchmark workers (standard library only:
torchgeo's worker imports it from its own environment).

The peak is the process's own high-water mark. ``ru_maxrss`` is not: Linux carries the parent's
resident set across fork and exec into it, so a worker started by a parent holding 1 GB reported
at least 1 GB whatever it used itself.
"""

from __future__ import annotations

import resource
from pathlib import Path

STATUS = Path("/proc/self/status")


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident set since it started (exec), in MiB: ``VmHWM`` where
    ``/proc`` has it, else ``ru_maxrss`` (which may include the parent's, see the module doc)."""
    if STATUS.exists():
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
