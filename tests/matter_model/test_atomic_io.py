"""Atomic files: a library's own save lands whole under the target name, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from matter_model.atomic_io import atomic_file, atomic_write_text
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
