"""Ground truth of the demo world, resampled onto any grid (for screening and evaluation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from scipy import ndimage

from matter_model.change_detection import ChangePair
from pipelines.dates import stack_dates
from pipelines.grid import Grid
from pipelines.scene_reader import read_asset
from pipelines.stack_store import open_stack, stack_grid


def change_truth(root: str | Path, region: str, dates: list[str], grid: Grid) -> np.ndarray:
    """Pixels (y, x) on ``grid`` whose land cover changed between any two of ``dates``."""
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = next((r for r in manifest["regions"] if r["name"] == region), None)
    if entry is None:
        raise KeyError(f"the demo world has no region {region!r}")
    changed = np.zeros((grid.height, grid.width), dtype=bool)
    for a, b in combinations(sorted(dates), 2):
        mask, _ = read_asset(
            str(root / entry["truth"]["change"][f"{a}_{b}"]), grid, Resampling.nearest
        )
        changed |= mask.astype(bool)
    return changed


def demo_change_pairs(
    root: str | Path, stack_paths: list[Path], bands: list[str], cloud_margin_px: int = 3
) -> Iterator[ChangePair]:
    """Each co-registered stack of the demo world as a change pair: its first and last dates,
    the planted-change truth on the stack's grid, and the pixels valid at both dates.

    A pixel invalid at either date takes the same values at both (the valid date's, else 0), so
    a cloud cannot look like change to a window-based feature; the valid mask is eroded by
    ``cloud_margin_px`` because cloud edges are thinner than the SCL sees.
    """
    for path in stack_paths:
        stack = open_stack(path).load()
        if stack.sizes["time"] < 2:
            continue
        dates = stack_dates(stack)
        first, last = stack.reflectance.sel(band=bands).values[[0, -1]]
        valid_first, valid_last = stack.valid.values[[0, -1]]
        first = np.where(valid_first, first, np.where(valid_last, last, 0.0))
        last = np.where(valid_last, last, first)
        valid = valid_first & valid_last
        if cloud_margin_px:
            valid = ndimage.binary_erosion(valid, iterations=cloud_margin_px, border_value=1)
        yield ChangePair(
            name=f"{stack.attrs['region']} {dates[0]}..{dates[-1]}",
            image_1=first.astype(np.float32),
            image_2=last.astype(np.float32),
            truth=change_truth(
                root, stack.attrs["region"], [dates[0], dates[-1]], stack_grid(stack)
            ),
            valid=valid,
        )
