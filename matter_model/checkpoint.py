"""Atomic training checkpoints and loading a trained model for downstream use."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from matter_model.atomic_io import atomic_write_bytes, clean_stale
from matter_model.inputs import REFLECTANCE
from matter_model.matter import Matter, create_model

# What checkpoints written before the word `normalisation` was settled called it.
_LEGACY_NORMALISATION_KEY = "inputs"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or lacks what the caller needs."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (``atomic_io``: a hidden file, fsync, rename).

    The leftovers of a writer killed mid-write (hidden, named after its process) are removed
    first, so resuming after kill -9 leaves no temporary file behind.
    """
    path = Path(path)
    clean_stale(path.parent)
    # Serialised in memory first: torch's zip writer turns a full disk into an opaque
    # "unexpected pos" error, where a plain write fails with the OS's own (EFBIG, ENOSPC).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; a clear error names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train first or fix the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {exc}") from exc
    missing = [key for key in ("model", "config") if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it is not a MATTER checkpoint")
    return state


def model_config(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's training config plus ``normalisation``: that of its training patches (one
    of ``matter_model.inputs.NORMALISATIONS``), so that downstream code feeds the model images
    prepared the same way. Checkpoints written before the word was settled call it ``inputs``;
    older ones have neither and were trained on reflectance."""
    normalisation = state.get("normalisation", state.get(_LEGACY_NORMALISATION_KEY, REFLECTANCE))
    return {**state["config"], "normalisation": normalisation}


def build_model(config: dict[str, Any]) -> Matter:
    """The model a training config describes (``config['model']`` plus ``config['bands']``)."""
    params = dict(config["model"])
    return create_model(params.pop("name"), bands=list(config["bands"]), **params)


def model_from_state(state: dict[str, Any], source: str | Path = "the checkpoint") -> Matter:
    """The model (train mode, on the CPU) that a loaded checkpoint ``state`` holds; ``source``
    names the checkpoint in the error raised when its weights do not fit its config."""
    try:
        model = build_model(model_config(state))
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {source} does not match its model config: {exc}"
        ) from exc
    return model


def load_model(
    checkpoint_path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Matter, dict[str, Any]]:
    """The trained model (in eval mode) and its :func:`model_config` from a checkpoint."""
    state = load_checkpoint(checkpoint_path, map_location)
    model = model_from_state(state, checkpoint_path)
    return model.to(map_location).eval(), model_config(state)
