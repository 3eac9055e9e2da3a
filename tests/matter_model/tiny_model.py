"""A tiny MATTER network and its checkpoint, shared by the evaluation tests (random weights:
enough for the mechanics, not for any figure)."""

from __future__ import annotations

from pathlib import Path

import torch

from matter_model.checkpoint import build_model, save_checkpoint
from matter_model.train import load_config

TINY_MODEL = {"width": 8, "blocks": [1], "tern_layers": 1, "codewords": 4, "embed_dim": 8}


def tiny_checkpoint(path: Path, **overrides: object) -> Path:
    """A valid checkpoint of the tiny network at ``path``, its config merged with ``overrides``."""
    config = load_config(None, model=TINY_MODEL, **overrides)
    torch.manual_seed(0)
    return save_checkpoint(path, {"model": build_model(config).state_dict(), "config": config})
