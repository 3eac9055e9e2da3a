"""Co-registered stacks on disk: a dask-backed stack is written one row of blocks at a time."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from dask.callbacks import Callback

from pipelines.stack_store import open_stack, write_stack

BLOCK = 32


def _stack(rng: np.random.Generator) -> xr.Dataset:
    """A 2-date, 3-band stack of 70 x 50 px in 32 px blocks, NaN where not valid."""
    valid = rng.uniform(size=(2, 70, 50)) > 0.2
    reflectance = rng.uniform(0, 1, (2, 3, 70, 50)).astype(np.float32)
    reflectance[np.broadcast_to(~valid[:, None], reflectance.shape)] = np.nan
    lazy_valid = da.from_array(valid, chunks=(1, BLOCK, BLOCK))
    return xr.Dataset(
        {
            "reflectance": (
                ("time", "band", "y", "x"),
                da.from_array(reflectance, chunks=(1, 3, BLOCK, BLOCK)),
            ),
            "valid": (("time", "y", "x"), lazy_valid),
            "valid_fraction": (("time",), lazy_valid.mean(axis=(1, 2)).astype(np.float32)),
            "shift_px": (("time", "axis"), np.zeros((2, 2), np.float32)),
        },
        coords={"band": ["B02", "B03", "B04"], "axis": ["y", "x"]},
        attrs={"region": "test"},
    )


class _Computations(Callback):
    """The block rows of ``reflectance`` that each dask computation read."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[set[int]] = []

    def _start(self, dsk) -> None:
        self.rows.append(set())


def test_a_lazy_stack_is_written_one_row_of_blocks_at_a_time(tmp_path) -> None:
    stack = _stack(np.random.default_rng(0))
    computations = _Computations()

    def note_row(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        computations.rows[-1].add(block_info[0]["chunk-location"][2])
        return block

    expected = stack.compute()
    lazy = stack.reflectance.data.map_blocks(note_row, dtype=np.float32)
    stack["reflectance"] = stack.reflectance.copy(data=lazy)
    with computations:
        written = open_stack(write_stack(stack, tmp_path / "stack.zarr"))
    reading = [rows for rows in computations.rows if rows]
    assert [len(rows) for rows in reading] == [1, 1, 1]  # 70 px in 32 px blocks: three rows
    assert set.union(*reading) == {0, 1, 2}
    np.testing.assert_array_equal(written.reflectance.values, expected.reflectance.values)
    np.testing.assert_array_equal(written.valid.values, expected.valid.values)
    np.testing.assert_array_equal(written.valid_fraction.values, expected.valid_fraction.values)
    assert written.reflectance.encoding["chunks"] == (1, 1, BLOCK, BLOCK)
    assert written.attrs == {"region": "test"}


def test_a_lazy_stack_without_valid_fractions_is_written(tmp_path) -> None:
    """A stack of other lazy variables (a plain warp's) is written row by row all the same."""
    stack = _stack(np.random.default_rng(1)).drop_vars("valid_fraction")
    expected = stack.compute()
    written = open_stack(write_stack(stack, tmp_path / "stack.zarr"))
    assert "valid_fraction" not in written
    np.testing.assert_array_equal(written.reflectance.values, expected.reflectance.values)
    np.testing.assert_array_equal(written.valid.values, expected.valid.values)
