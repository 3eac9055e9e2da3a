"""Images for people to look at: reflectance or features turned into displayable values."""

from __future__ import annotations

import numpy as np


def contrast_stretch(values: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """``values`` scaled to [0, 1] between their ``low`` and ``high`` percentiles (over the
    finite values, all of them together) and clipped: a stretch that outliers such as clouds or
    saturated pixels do not flatten. NaN shows as 0."""
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, [low, high]) if finite.size else (0.0, 1.0)
    return np.nan_to_num(np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1))
