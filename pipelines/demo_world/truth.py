"""Ground truth of the demo world, resampled onto any grid (for screening and evaluation)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling

from matter_model.change_detection import ChangePair
from pipelines.coregistration import Grid, open_stack, read_asset, stack_grid


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
    root: str | Path, stack_paths: list[Path], bands: list[str]
) -> Iterator[ChangePair]:
    """Each co-registered stack of the demo world as a change pair: its first and last dates,
    the planted-change truth on the stack's grid, and the pixels valid at both dates."""
    for path in stack_paths:
        stack = open_stack(path).load()
        if stack.sizes["time"] < 2:
            continue
        dates = [str(t)[:10] for t in stack.time.values.astype("datetime64[D]")]
        reflectance = stack.reflectance.sel(band=bands).values
        valid = stack.valid.values[0] & stack.valid.values[-1]
        yield ChangePair(
            name=f"{stack.attrs['region']} {dates[0]}..{dates[-1]}",
            image_1=np.nan_to_num(reflectance[0]),
            image_2=np.nan_to_num(reflectance[-1]),
            truth=change_truth(
                root, stack.attrs["region"], [dates[0], dates[-1]], stack_grid(stack)
            ),
            valid=valid,
        )
