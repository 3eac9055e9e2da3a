"""Co-registered stacks on disk: written to zarr v3 atomically, opened lazily, and their grid.

The stack's contract (variables and attributes) is that of :mod:`pipelines.coregistration`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import xarray as xr
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

    A dask-backed stack is streamed block by block (one zarr chunk per block and band), so the
    write holds no more than the blocks in flight.
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
        stack.to_zarr(
            tmp,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={"reflectance": {"chunks": (1, 1, *spatial)}},
        )
    return path


def open_stack(path: str | Path) -> xr.Dataset:
    """Open a stack written by :func:`write_stack` (lazily, dask-backed)."""
    if not Path(path, "zarr.json").exists():
        raise CoregistrationError(
            f"no co-registered stack at {path}; materialise `coregistered_stack` for this "
            "partition first"
        )
    return xr.open_zarr(path, consolidated=False, zarr_format=3)
