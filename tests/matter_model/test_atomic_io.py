"""Atomic files: a library's own save lands whole under the target name, or not at all; out of
room, the error names the target and what to do."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch

from matter_model.atomic_io import (
    DiskFullError,
    atomic_directory,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
)
from matter_model.checkpoint import load_checkpoint, save_checkpoint


def test_atomic_file_replaces_the_target_whole(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "scene.tif"
    atomic_write_text(target, "old")
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".")
        assert tmp.name.endswith(target.name)  # writers that go by the suffix still work
        tmp.write_text("new")
        assert target.read_text() == "old"  # not yet replaced
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["scene.tif"]


def test_a_failed_write_leaves_the_old_file_and_no_leftover(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_checkpoint_saves_through_atomic_file(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(3)}, "config": {"bands": ["B02"]}}
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", state)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_a_file_write_out_of_room_names_the_file_and_what_to_do(
    tmp_path: Path, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "ckpt" / "last.pt"
    atomic_write_text(target, "old")

    def full(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", full)  # the write's data reaching the disk fails
    with pytest.raises(DiskFullError) as failure:
        atomic_write_bytes(target, b"new")
    message = str(failure.value)
    assert failure.value.errno == code and os.strerror(code) in message
    assert f"while writing {target}:" in message
    assert "Free space there" in message and "storage.root" in message
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.pt"]


def test_a_folder_write_out_of_room_names_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "stacks" / "2024-04-01.zarr"
    with atomic_directory(target) as tmp:
        (tmp / "old").write_text("old")
    said = re.escape(f"No space left on device while writing {target}:")
    with pytest.raises(DiskFullError, match=said), atomic_directory(target) as tmp:
        (tmp / "half").write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert sorted(p.name for p in target.iterdir()) == ["old"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["2024-04-01.zarr"]


def test_other_errors_and_an_inner_targets_name_pass_unchanged(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), atomic_file(tmp_path / "a.json"):
        raise PermissionError(errno.EACCES, "Permission denied")
    inner = tmp_path / "shard" / "store.json"
    said = re.escape(f"while writing {inner}:")
    with (
        pytest.raises(DiskFullError, match=said),
        atomic_directory(tmp_path / "shard"),
        atomic_file(inner),
    ):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
