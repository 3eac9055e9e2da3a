"""A synthetic co-registered stack for screening and tiling tests (the contract of coregister)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from matter_model.bands import MATTER_BANDS

BANDS = list(MATTER_BANDS)


def synthetic_stack(
    size: int = 128,
    dates: int = 3,
    changed: tuple[int, int, int, int] | None = (70, 80, 14, 12),
    seed: int = 0,
) -> xr.Dataset:
    """Textured reflectance; each date has its own per-band gain and haze offset; a patch
    ``changed`` = (y0, x0, h, w) takes another spectrum from the last date on."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=(len(BANDS), size, size)), (0, 1.5, 1.5))
    base = 0.2 + 0.05 * texture / texture.std()
    images = []
    for t in range(dates):
        gain = rng.uniform(0.85, 1.15, size=(len(BANDS), 1, 1))
        haze = rng.uniform(0.0, 0.03, size=(len(BANDS), 1, 1))
        image = base * gain + haze + rng.normal(0, 0.002, size=base.shape)
        if changed is not None and t == dates - 1:
            y0, x0, h, w = changed
            image[:, y0 : y0 + h, x0 : x0 + w] = np.linspace(0.05, 0.5, len(BANDS))[:, None, None]
        images.append(image.astype(np.float32))
    valid = np.ones((dates, size, size), dtype=bool)
    valid[0, :20, :20] = False  # a cloud on the first date
    reflectance = np.stack(images)
    reflectance[0][:, ~valid[0]] = np.nan
    coords = 500000 + 10 * (np.arange(size) + 0.5)
    return xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), reflectance),
            "valid": (("time", "y", "x"), valid),
        },
        coords={
            "time": np.array(
                [f"2024-05-{10 + 5 * t:02d}" for t in range(dates)], dtype="datetime64[ns]"
            ),
            "band": BANDS,
            "y": coords[::-1] + 4000000,
            "x": coords,
        },
        attrs={
            "crs": "EPSG:32631",
            "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 4500000.0 + 10 * size],
            "region": "synthetic",
        },
    )
