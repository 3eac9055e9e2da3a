"""Checkpoint writes after a writer was killed mid-write: its hidden leftover goes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from matter_model.atomic_io import _HOST
from matter_model.checkpoint import load_checkpoint, save_checkpoint


def test_a_killed_writers_leftover_is_removed_by_the_next_save(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(dead.stdout)
    leftover = tmp_path / f".tmp.{_HOST}.{pid}.{'0' * 32}.checkpoint.pt"
    leftover.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(2)}, "config": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint.pt")["model"]["w"], torch.ones(2))
