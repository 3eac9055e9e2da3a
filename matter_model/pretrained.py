"""Load exported MATTER weights and prepare images exactly as their training did.

An export folder (written by ``python -m matter_model.export``) holds ``model.safetensors`` and
``model_card.json``, which declares the inputs the weights expect: the bands in order, the
product level, how digital numbers become reflectance, and the normalisation. ``load(folder)``
returns the model and a :class:`Prepare` that turns a raw band stack into the model's input, and
refuses a stack whose bands or product level disagree with the card::

    model, prepare = matter_model.load("export/")
    embeddings = model.embed(prepare(dn, bands, "L2A"), window=prepare.window)

Only torch, numpy and safetensors are needed: nothing here imports Dagster or the pipelines.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from matter_model.checkpoint import build_model
from matter_model.inputs import PREPARATIONS
from matter_model.matter import Matter

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
CARD_FORMAT = "matter-model-card"
CARD_VERSION = 1
PRODUCT_LEVELS = ("L1C", "L2A")


class ExportError(RuntimeError):
    """An export folder is missing, corrupt, or does not declare what loading needs."""


class InputMismatchError(ValueError):
    """An image's bands or product level are not those the weights were trained on."""


def parse_product_level(name: str) -> str:
    """``name`` as one of :data:`PRODUCT_LEVELS` (case-insensitive); a ValueError otherwise."""
    level = str(name).upper()
    if level not in PRODUCT_LEVELS:
        raise ValueError(f"unknown product level {name!r}; choose one of {list(PRODUCT_LEVELS)}")
    return level


def read_card(folder: str | Path) -> dict[str, Any]:
    """The model card of an export folder, checked to be one this version reads."""
    path = Path(folder) / CARD
    if not path.is_file():
        raise ExportError(
            f"no {CARD} in {folder}: it is not a MATTER export; write one with "
            "`python -m matter_model.export --checkpoint PATH --out DIR`"
        )
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is unreadable or corrupt ({exc}); export again") from exc
    if not isinstance(card, dict) or (card.get("format"), card.get("version")) != (
        CARD_FORMAT,
        CARD_VERSION,
    ):
        found = (card.get("format"), card.get("version")) if isinstance(card, dict) else card
        raise ExportError(
            f"{path} is not a {CARD_FORMAT} v{CARD_VERSION} card (found {found}); export again "
            "with this version"
        )
    return card


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_weights(folder: Path, card: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS
    if not path.is_file():
        raise ExportError(f"no {WEIGHTS} in {folder}: the export is incomplete; export again")
    expected = card["weights"]["sha256"]
    if file_sha256(path) != expected:
        raise ExportError(
            f"{path} does not match the SHA-256 its card records ({expected}): the file is "
            "corrupt or from another export; export again"
        )
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise ExportError(f"{path} is unreadable or corrupt ({exc}); export again") from exc


class Prepare:
    """Turn a raw band stack into the model's input, as the card says training did.

    Call it with ``stack``, an array of digital numbers (DN) as in the product's band files,
    ``(C, H, W)`` or ``(B, C, H, W)``; ``bands``, the names of its C bands in order; and
    ``level``, its product level (``L1C`` or ``L2A``). Both must equal the card's, else an
    :class:`InputMismatchError` names the two. ``offset`` replaces the card's reflectance offset
    (for scenes of another processing baseline). The result is a float32 tensor
    ``(B, C, H, W)``: reflectance ``DN * scale + offset``, normalised per the card (for
    ``scene-standardised``, each image over its own pixels, so pass the whole scene, not a crop).
    Invalid pixels must be filled first: training never saw a NaN.
    """

    def __init__(self, card: dict[str, Any]) -> None:
        inputs = card["inputs"]
        self.bands = tuple(inputs["bands"])
        self.level = inputs["product_level"]
        self.scale = float(inputs["reflectance"]["scale"])
        self.offset = float(inputs["reflectance"]["offset"])
        self.normalisation = inputs["normalisation"]["method"]
        self.window = int(inputs["window"])
        if self.normalisation not in PREPARATIONS:
            raise ExportError(
                f"the card's normalisation {self.normalisation!r} is unknown to this version "
                f"(it knows {sorted(PREPARATIONS)}); update the code"
            )
        self._normalise = PREPARATIONS[self.normalisation]

    def check(self, bands: Sequence[str], level: str) -> None:
        """Raise InputMismatchError unless ``bands`` and ``level`` are the card's."""
        if tuple(bands) != self.bands:
            hint = (
                " (the same bands in another order: reorder them)"
                if sorted(bands) == sorted(self.bands)
                else ""
            )
            raise InputMismatchError(
                f"the image has bands {list(bands)}, the model was trained on "
                f"{list(self.bands)}{hint}"
            )
        if str(level).upper() != self.level:
            raise InputMismatchError(
                f"the image is product level {level!r}, the model was trained on {self.level!r} "
                "reflectance; use imagery of that level"
            )

    def __call__(
        self,
        stack: np.ndarray | torch.Tensor,
        bands: Sequence[str],
        level: str,
        offset: float | None = None,
    ) -> torch.Tensor:
        self.check(bands, level)
        x = np.asarray(stack.cpu() if isinstance(stack, torch.Tensor) else stack)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != len(self.bands):
            raise InputMismatchError(
                f"the stack has shape {x.shape}; expected (C, H, W) or (B, C, H, W) with "
                f"C = {len(self.bands)} bands"
            )
        shift = self.offset if offset is None else float(offset)
        reflectance = x.astype(np.float32) * np.float32(self.scale) + np.float32(shift)
        prepared = np.stack([self._normalise(image) for image in reflectance])
        if not np.isfinite(prepared).all():
            raise InputMismatchError(
                "the stack holds NaN or infinite pixels; fill invalid pixels first"
            )
        return torch.from_numpy(np.ascontiguousarray(prepared, dtype=np.float32))


def load(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[Matter, Prepare]:
    """The exported model (eval mode, on ``map_location``) and its :class:`Prepare`."""
    folder = Path(folder)
    card = read_card(folder)
    try:
        prepare = Prepare(card)
        config = {"model": card["architecture"]["model"], "bands": card["inputs"]["bands"]}
        weights = _read_weights(folder, card)
        model = build_model(config)
        model.load_state_dict(weights)
    except ExportError:
        raise
    except (KeyError, TypeError) as exc:
        raise ExportError(f"{folder / CARD} lacks {exc}; export again") from exc
    except (ValueError, RuntimeError) as exc:
        raise ExportError(
            f"the weights in {folder} do not fit the architecture their card declares: {exc}"
        ) from exc
    logger.info("loaded %s (%s, bands %s)", folder, prepare.level, list(prepare.bands))
    return model.to(map_location).eval(), prepare
