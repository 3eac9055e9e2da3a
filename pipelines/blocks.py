"""Non-overlapping square blocks of a raster: the windows the screen scores and the tiling cuts."""

from __future__ import annotations

import numpy as np


def as_blocks(array: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` blocks of the last two axes as ``(..., rows, cols, size, size)``
    (a view where numpy can make one); rows and columns past the last whole block are dropped."""
    *lead, height, width = array.shape
    rows, cols = height // size, width // size
    cropped = array[..., : rows * size, : cols * size]
    return cropped.reshape(*lead, rows, size, cols, size).swapaxes(-3, -2)
