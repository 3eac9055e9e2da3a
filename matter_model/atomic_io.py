"""Atomic writes: a reader sees the old content or the new, never a half-written file or folder.

Files and folders are written under a hidden temporary name beside their target (names that
start with a dot are never read as results), flushed to disk with fsync, and renamed into place.
Replacing an existing folder swaps the two atomically where the kernel can (Linux
``renameat2(RENAME_EXCHANGE)``), so its name never points at nothing. A writer killed at any
moment leaves at most a hidden leftover, named after its host and process id; the next write into
the same folder removes the leftovers of processes of this host that are gone (and puts back a
folder a killed fallback swap had moved aside), so reruns start clean.

A write that runs out of space (ENOSPC, EDQUOT) or past the file-size limit (EFBIG) fails with
:class:`DiskFullError`, an ``OSError`` with the same errno whose message names the file or folder
being written and what to do; the previous version stays.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Hidden names: ".tmp.<host>.<pid>.<random>.<target>" (being written, or an old folder swapped
# out and not yet deleted) and ".trash.<host>.<pid>.<random>.<target>" (a folder moved aside by
# the fallback swap). <host> is a short hash of the host name, so the name stays dot-free.
_TMP, _TRASH = "tmp", "trash"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# Errors of a write that found no room: no space left, quota exceeded, file-size limit reached.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """A write found no room (errno ENOSPC, EDQUOT or EFBIG); the message names the target."""


def _no_room(err: OSError, target: Path) -> DiskFullError:
    """``err`` restated as a :class:`DiskFullError` naming ``target`` and what to do."""
    return DiskFullError(
        err.errno,
        f"{err.strerror} while writing {target}: the disk or quota of {target.parent} is full, "
        "or a file-size limit was reached. Free space there (or raise the limit), or point the "
        "output elsewhere (`storage.root` in the config, or the command's output path), then "
        f"rerun; the previous version of {target.name}, if any, is unchanged.",
    )


@contextmanager
def _naming_no_room(target: Path) -> Iterator[None]:
    """Re-raise an out-of-room ``OSError`` raised inside as a :class:`DiskFullError`."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if err.errno not in _NO_ROOM:
            raise
        raise _no_room(err, target) from err


def _hidden_name(kind: str, target: str) -> str:
    return f".{kind}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.{target}"


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the names inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` for a writer that wants a file name (a
    library's own save); on success it is fsynced and renamed over ``path``, on error it goes.

    The temporary name ends with ``path``'s name, so writers that go by the suffix still work.
    Out of room, the error is a :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(_hidden_name(_TMP, path.name))
    try:
        with _naming_no_room(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            _fsync_path(tmp)
            os.replace(tmp, path)
            _fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, fsync it, and rename it over."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def clean_stale(folder: str | Path) -> list[str]:
    """Remove the hidden leftovers of dead writers of this host in ``folder``; return their names.

    A ``.trash`` folder whose target is missing is the old content of a fallback swap killed
    between its two renames: it is complete, so it is renamed back rather than deleted. Leftovers
    of live processes, of other hosts, and names this module did not make are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    cleaned = []
    for entry in sorted(folder.iterdir()):
        parts = entry.name.split(".", 5)
        if len(parts) != 6 or parts[0] or parts[1] not in (_TMP, _TRASH) or parts[2] != _HOST:
            continue
        if not parts[3].isdigit() or not _process_gone(int(parts[3])):
            continue
        target = folder / parts[5]
        if parts[1] == _TRASH and not target.exists():
            os.replace(entry, target)
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        cleaned.append(entry.name)
    return cleaned


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the kernel or file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary folder; on success it replaces ``path`` whole, on error it goes.

    Before yielding, the dead writers' leftovers beside ``path`` are cleaned (:func:`clean_stale`).
    On success every file is fsynced, then the folder takes ``path``'s name in one rename (or one
    atomic exchange with the old folder, which is then deleted). Out of room, the error is a
    :class:`DiskFullError` naming ``path``.
    """
    final = Path(path)
    with _naming_no_room(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(final.parent)
        tmp = final.with_name(_hidden_name(_TMP, final.name))
        tmp.mkdir()
        try:
            yield tmp
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not final.exists():
            os.replace(tmp, final)
        elif _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old content
        else:
            trash = final.with_name(_hidden_name(_TRASH, final.name))
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        _fsync_path(final.parent)
