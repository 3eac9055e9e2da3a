"""How an image is prepared for a model: the normalisation its training patches had.

A patch store says how its numbers are normalised (its ``normalisation``, one of
:data:`NORMALISATIONS`), a checkpoint and its config record the same, and an exported model
card declares it; :func:`input_preparation` turns it into the :data:`Preparation` that feeds
every downstream task images on that scale:

- ``reflectance``: DN / 10000 as read (L2A surface or, for OSCD, L1C top-of-atmosphere);
- ``scene-standardised``: each band of the whole image robustly standardised (median, IQR).
  Between two dates of one place this removes a global gain and offset per band (sun angle,
  atmosphere, L1C against L2A), which the OSCD pretraining store relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Preparation = Callable[[np.ndarray], np.ndarray]

REFLECTANCE = "reflectance"
SCENE_STANDARDISED = "scene-standardised"
NORMALISATIONS = (REFLECTANCE, SCENE_STANDARDISED)  # what a patch store's numbers can be

# IQR of a standard normal: dividing by IQR / 1.349 gives a robust, std-like scale.
IQR_TO_STD = 1.3489795


def standardise(
    image: np.ndarray,
    robust: bool = True,
    valid: np.ndarray | None = None,
    min_scale: float = 0.0,
) -> np.ndarray:
    """Standardise each band of ``(C, H, W)`` as float32, over the pixels of ``valid`` (``(H, W)``
    bool) or, without it, over each band's finite pixels.

    Robust (default): subtract the median and divide by IQR / 1.349 (a std-like scale that
    ignores outliers such as clouds); otherwise mean and std. A scale under ``min_scale`` is
    raised to it; a flat band (scale 0) is only centred.
    """
    x = np.asarray(image, dtype=np.float32)
    out = np.empty_like(x)
    for c, band in enumerate(x):
        try:
            centre, scale = band_statistics(band, robust, valid, min_scale)
        except ValueError as exc:
            raise ValueError(f"band {c} {exc}") from None
        out[c] = (band - centre) / scale
    return out


def band_statistics(
    band: np.ndarray,
    robust: bool = True,
    valid: np.ndarray | None = None,
    min_scale: float = 0.0,
) -> tuple[np.float64, np.float64]:
    """The centre and scale :func:`standardise` gives one band ``(H, W)`` (a flat band's scale
    is 1); tiled inference computes them once per scene and applies them per tile."""
    pixels = band[np.isfinite(band) if valid is None else valid]
    if pixels.size == 0:
        raise ValueError(f"has no {'finite' if valid is None else 'valid'} pixel")
    if robust:
        q1, centre, q3 = np.percentile(pixels, [25, 50, 75])
        scale = max((q3 - q1) / IQR_TO_STD, min_scale)
    else:
        centre, scale = pixels.mean(), max(pixels.std(), min_scale)
    # float64, as numpy's statistics give them: the arithmetic of standardise is unchanged
    return np.float64(centre), np.float64(scale if scale > 0 else 1.0)


def as_reflectance(image: np.ndarray) -> np.ndarray:
    """The identity: reflectance (DN / 10000) as read."""
    return image


PREPARATIONS: dict[str, Preparation] = {
    REFLECTANCE: as_reflectance,
    SCENE_STANDARDISED: standardise,
}


def input_preparation(config: Mapping[str, Any]) -> Preparation:
    """The preparation a model's config asks for (``config['normalisation']``; reflectance if
    absent)."""
    normalisation = config.get("normalisation", REFLECTANCE)
    try:
        return PREPARATIONS[normalisation]
    except KeyError:
        raise ValueError(
            f"the checkpoint's normalisation is {normalisation!r}; this version knows "
            f"{sorted(PREPARATIONS)}"
        ) from None
