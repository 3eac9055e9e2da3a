"""Co-registered stacks on disk: written to zarr v3 atomically, opened lazily, and their grid.

The stack's contract (variables and attributes) is that of :mod:`pipelines.coregistration`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from affine import Affine
from zarr.errors import UnstableSpecificationWarning

from matter_model.atomic_io import atomic_directory
from pipelines.grid import CoregistrationError, Grid


def stack_grid(stack: xr.Dataset) -> Grid:
    """The :class:`Grid` a stack was written on."""
    return Grid(
        epsg=int(stack.attrs["crs"].split(":")[1]),
        transform=Affine(*stack.attrs["transform"]),
        width=stack.sizes["x"],
        height=stack.sizes["y"],
    )


def write_stack(stack: xr.Dataset, path: str | Path) -> Path:
    """Write a stack to zarr v3 atomically (a rerun replaces it whole).

    A dask-backed stack is computed and written one row of blocks at a time (one zarr chunk per
    block and band), so that the write holds at most one row's blocks whatever the grid's
    height: computed all at once, a large grid let dask's threads read ahead of the writes and
    hold more blocks than a small one (docs/benchmarks.md).
    """
    path = Path(path)
    reflectance = stack["reflectance"]
    if reflectance.chunks:
        spatial = (reflectance.chunks[2][0], reflectance.chunks[3][0])
    else:
        spatial = (min(512, stack.sizes["y"]), min(512, stack.sizes["x"]))
    # The band and date labels are short strings, which zarr v3 stores with a dtype it still
    # calls unstable; zarr-python reads them back, and nothing else reads these stacks.
    with atomic_directory(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        in_memory = reflectance.chunks is None
        stack.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={"reflectance": {"chunks": (1, 1, *spatial)}},
            compute=in_memory,
        )
        if not in_memory:
            _write_block_rows(stack, zarr.open_group(tmp, mode="r+", zarr_format=3))
    return path


def _write_block_rows(stack: xr.Dataset, group: zarr.Group) -> None:
    """Compute and write the stack's lazy variables along ``y`` one row of blocks at a time,
    and its ``valid_fraction``, if it has one, from the valid pixels counted on the way."""
    lazy = [name for name, v in stack.data_vars.items() if v.chunks and "y" in v.dims]
    fractions = "valid_fraction" in stack.data_vars
    counts = np.zeros(stack.sizes.get("time", 1), dtype=np.int64)
    y0 = 0
    for height_px in stack.chunks["y"]:
        rows = slice(y0, y0 + height_px)
        parts = [stack[name].isel(y=rows) for name in lazy]
        written = da.store(
            [da.asarray(part.data) for part in parts],
            [group[name] for name in lazy],
            regions=[_region(stack[name].dims, rows) for name in lazy],
            lock=False,
            compute=False,
        )
        counted = stack["valid"].isel(y=rows).sum(("y", "x")).data if fractions else 0
        counts += dask.compute(written, counted)[1]
        y0 += height_px
    if fractions:
        group["valid_fraction"][:] = (counts / (stack.sizes["y"] * stack.sizes["x"])).astype(
            np.float32
        )


def _region(dims: tuple, rows: slice) -> tuple[slice, ...]:
    """The part of a variable with ``dims`` that lies in the grid rows ``rows``."""
    return tuple(rows if dim == "y" else slice(None) for dim in dims)


def open_stack(path: str | Path) -> xr.Dataset:
    """Open a stack written by :func:`write_stack` (lazily, dask-backed)."""
    if not Path(path, "zarr.json").exists():
        raise CoregistrationError(
            f"no co-registered stack at {path}; materialise `coregistered_stack` for this "
            "partition first"
        )
    return xr.open_zarr(path, consolidated=False, zarr_format=3)
