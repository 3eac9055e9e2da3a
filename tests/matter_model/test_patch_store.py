"""The patch store: atomic shards, idempotent rewrites, band checks, reading by band name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from matter_model.patch_store import (
    PatchStoreError,
    StoreInfo,
    TripletDataset,
    read_patches,
    shard_ids,
    write_shard,
)

INFO = StoreInfo(bands=("B02", "B03", "B04"), patch_size=8)


def _shard(n: int, value: float = 0.0) -> dict:
    rng = np.random.default_rng(int(value))
    crops = [rng.random((n, 3, 8, 8), dtype=np.float32) + value for _ in range(3)]
    return dict(
        anchor=crops[0],
        positive=crops[1],
        negative=crops[2],
        patches=pd.DataFrame({"region": ["r"] * n, "anchor_date": ["2024-05-01"] * n}),
    )


def test_round_trip_by_band_name(tmp_path) -> None:
    data = _shard(5)
    write_shard(tmp_path, "r__2024-04-01", INFO, **data)
    dataset = TripletDataset(tmp_path, bands=["B04", "B02"])
    assert len(dataset) == 5
    sample = dataset[2]
    np.testing.assert_array_equal(sample["anchor"].numpy(), data["anchor"][2][[2, 0]])
    np.testing.assert_array_equal(sample["negative"].numpy(), data["negative"][2][[2, 0]])


def test_rewriting_a_shard_replaces_it_whole(tmp_path) -> None:
    write_shard(tmp_path, "a", INFO, **_shard(5, 0.0))
    write_shard(tmp_path, "a", INFO, **_shard(3, 1.0))
    assert shard_ids(tmp_path) == ["a"]
    assert len(read_patches(tmp_path)) == 3
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["a"]  # no temp or trash left


def test_hidden_partial_shards_are_invisible(tmp_path) -> None:
    write_shard(tmp_path, "a", INFO, **_shard(2))
    (tmp_path / "shards" / ".tmp-b-123").mkdir()  # what a killed writer leaves
    assert shard_ids(tmp_path) == ["a"]
    assert len(TripletDataset(tmp_path)) == 2


def test_bad_input_is_named(tmp_path) -> None:
    with pytest.raises(PatchStoreError, match="no patch store"):
        TripletDataset(tmp_path)
    write_shard(tmp_path, "a", INFO, **_shard(2))
    with pytest.raises(PatchStoreError, match=r"missing \['B08'\]"):
        TripletDataset(tmp_path, bands=["B02", "B08"])
    with pytest.raises(PatchStoreError, match="re-tile every partition"):
        write_shard(
            tmp_path,
            "b",
            StoreInfo(("B02",), 8),
            **{
                **_shard(2),
                "anchor": np.zeros((2, 1, 8, 8), np.float32),
                "positive": np.zeros((2, 1, 8, 8), np.float32),
                "negative": np.zeros((2, 1, 8, 8), np.float32),
            },
        )
    bad = _shard(2)
    bad["positive"][0, 0, 0, 0] = np.nan
    with pytest.raises(PatchStoreError, match="NaN"):
        write_shard(tmp_path, "c", INFO, **bad)
