"""Perturbations of the positive crop: what differs between two dates of unchanged ground.

The positive of a triplet is the anchor's place at another date. Between two real dates an
unchanged surface still differs by a gain and an offset per band (sun, atmosphere, season, sensor)
that whole-scene standardisation removes only on average, by sensor noise, and by a residual
misregistration of a pixel or so. Drawing such differences on the positive alone, per triplet,
teaches the embedding to ignore them; the anchor and the negative are left as read, so the
negatives still differ by place only. The change screen keeps only windows that changed little,
so without this the positives rarely show those differences at all.

All draws come from the caller's generator (the training step's), so a resumed run repeats them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PositiveJitter:
    """Per-triplet perturbation of positive crops (B, C, H, W); all zero leaves them unchanged.

    ``gain``: standard deviation of the log gain drawn per band; ``offset``: standard deviation
    of the offset drawn per band, in the crop's units; ``noise``: standard deviation of
    independent noise per pixel and band; ``shift_px``: largest shift in rows and in columns,
    drawn as whole pixels, with the edge pixels repeated into the uncovered border.
    """

    gain: float = 0.0
    offset: float = 0.0
    noise: float = 0.0
    shift_px: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"augment.{f.name} must be >= 0, got {getattr(self, f.name)}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> PositiveJitter:
        """From a config's ``augment`` section (absent: no perturbation)."""
        section = dict(section or {})
        return cls(
            gain=float(section.get("gain", 0.0)),
            offset=float(section.get("offset", 0.0)),
            noise=float(section.get("noise", 0.0)),
            shift_px=int(section.get("shift_px", 0)),
        )

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def __call__(self, crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.active:
            return crops
        b, c = crops.shape[:2]
        out = crops
        if self.shift_px:
            out = shift_crops(out, self._draw_shifts(b, generator))
        if self.gain or self.offset:
            gain = torch.exp(self.gain * torch.randn(b, c, 1, 1, generator=generator))
            offset = self.offset * torch.randn(b, c, 1, 1, generator=generator)
            out = out * gain.to(out) + offset.to(out)
        if self.noise:
            out = out + self.noise * torch.randn(out.shape, generator=generator).to(out)
        return out

    def _draw_shifts(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(-self.shift_px, self.shift_px + 1, (batch, 2), generator=generator)


def shift_crops(crops: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each crop (B, C, H, W) moved by its (rows, cols) in ``shifts`` (B, 2): the pixel at
    (y, x) comes from (y - rows, x - cols), the nearest edge pixel where that lies outside."""
    s = int(shifts.abs().max()) if shifts.numel() else 0
    if s == 0:
        return crops
    h, w = crops.shape[-2:]
    padded = F.pad(crops, (s, s, s, s), mode="replicate")
    return torch.stack(
        [
            padded[i, :, s - dy : s - dy + h, s - dx : s - dx + w]
            for i, (dy, dx) in enumerate(shifts.tolist())
        ]
    )
