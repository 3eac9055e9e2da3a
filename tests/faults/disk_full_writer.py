"""``python -m tests.faults.disk_full_writer KIND TARGET VERSION``: write one stack, shard or
checkpoint of seeded random values, small for version 1 and large for version 2, through the
project's own writers (run under a file-size limit by :mod:`tests.faults.disk_full`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SIZES = {1: 64, 2: 512}  # stack side in px; shards and checkpoints scale with it


def write_stack(target: Path, side: int, rng: np.random.Generator) -> None:
    import xarray as xr

    from pipelines.stack_store import write_stack as write

    values = rng.uniform(0, 1, (2, 3, side, side)).astype(np.float32)
    coords = {"time": ["2024-05-10", "2024-06-14"], "band": ["B02", "B03", "B04"]}
    coords |= {"y": np.arange(side) * -10.0, "x": np.arange(side) * 10.0}
    write(xr.Dataset({"reflectance": (("time", "band", "y", "x"), values)}, coords=coords), target)


def write_shard(target: Path, side: int, rng: np.random.Generator) -> None:
    import pandas as pd

    from matter_model.bands import MATTER_BANDS
    from matter_model.patch_store import StoreInfo
    from matter_model.patch_store import write_shard as write

    n = side // 2
    roles = [rng.uniform(0, 0.4, (n, 9, 32, 32)).astype(np.float32) for _ in range(3)]
    table = pd.DataFrame({"region": ["synthetic"] * n})
    write(target, "s0", StoreInfo(MATTER_BANDS, 32), *roles, table)


def write_checkpoint(target: Path, side: int, rng: np.random.Generator) -> None:
    import torch

    from matter_model.checkpoint import save_checkpoint

    weights = torch.from_numpy(rng.uniform(0, 1, side * side * 4).astype(np.float32))
    save_checkpoint(target, {"model": {"w": weights}, "config": {"side": side}, "step": side})


WRITERS = {"stack": write_stack, "shard": write_shard, "checkpoint": write_checkpoint}


if __name__ == "__main__":
    kind, target, version = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    WRITERS[kind](target, SIZES[version], np.random.default_rng(version))
