"""The inference assets on a synthetic stack and a tiny checkpoint: embeddings in zarr, change
maps as COGs on the stack's grid."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import rasterio
import rioxarray
import xarray as xr

from assets.inference import change_maps, material_embeddings, write_cog
from assets.resources import DataStore
from pipelines.stack_store import write_stack
from tests.matter_model.tiny_model import tiny_checkpoint
from tests.pipelines.stacks import synthetic_stack

PARTITION = "beauce|2024-04-01"


def test_embeddings_and_change_maps_materialise(tmp_path: Path) -> None:
    store = DataStore(root=str(tmp_path))
    stack = synthetic_stack(size=96, dates=3)
    write_stack(stack, store.stack("beauce", "2024-04-01"))
    tiny_checkpoint(store.model_dir / "checkpoint.pt")
    result = dg.materialize(
        [material_embeddings, change_maps],
        partition_key=PARTITION,
        resources={"store": store},
        run_config={
            "ops": {"material_embeddings": {"config": {"tile": 48, "overlap": 16}}},
        },
    )
    assert result.success

    embeddings = xr.open_zarr(store.embeddings("beauce", "2024-04-01"), consolidated=False)
    assert embeddings.embedding.dtype == np.float16
    assert embeddings.embedding.shape[0] == 3 and embeddings.embedding.shape[2:] == (96, 96)
    assert embeddings.attrs["crs"] == stack.attrs["crs"]
    assert embeddings.attrs["transform"] == stack.attrs["transform"]
    assert np.isfinite(embeddings.embedding.values).all()

    folder = store.change_maps("beauce", "2024-04-01")
    pairs = ["2024-05-10_2024-05-15", "2024-05-15_2024-05-20"]
    for pair in pairs:
        score = rioxarray.open_rasterio(folder / f"{pair}_score.tif")
        assert score.rio.crs.to_epsg() == 32631
        assert tuple(score.rio.transform())[:6] == tuple(stack.attrs["transform"])
        with rasterio.open(folder / f"{pair}_change.tif") as mask:
            assert mask.driver == "GTiff" and mask.nodata == 255
            assert set(np.unique(mask.read(1))) <= {0, 1, 255}
    assert (folder / "preview.png").exists()
    metadata = result.asset_materializations_for_node("change_maps")[0].metadata
    assert metadata["pairs"].value == 2
    shares = metadata["changed_share"].value
    assert set(shares) == set(pairs) and all(0 <= s <= 1 for s in shares.values())


def test_change_map_cogs_have_overviews_and_the_grid(tmp_path: Path) -> None:
    size = 600
    like = synthetic_stack(size=size, dates=1)
    values = np.random.default_rng(0).random((size, size)).astype(np.float32)
    write_cog(values, like, tmp_path / "score.tif", np.nan, "average")
    with rasterio.open(tmp_path / "score.tif") as cog:
        assert cog.overviews(1)  # a viewer reads a zoomed-out level, not every pixel
        assert cog.crs.to_epsg() == 32631
        assert tuple(cog.transform)[:6] == tuple(like.attrs["transform"])
        np.testing.assert_array_equal(cog.read(1), values)


def test_a_pair_under_cloud_gives_an_empty_change_map(tmp_path: Path) -> None:
    store = DataStore(root=str(tmp_path))
    stack = synthetic_stack(size=48, dates=2)
    stack["valid"][1] = False
    stack["reflectance"][1] = np.nan
    write_stack(stack, store.stack("beauce", "2024-04-01"))
    tiny_checkpoint(store.model_dir / "checkpoint.pt")
    result = dg.materialize(
        [material_embeddings, change_maps], partition_key=PARTITION, resources={"store": store}
    )
    assert result.success
    metadata = result.asset_materializations_for_node("change_maps")[0].metadata
    assert metadata["changed_share"].value == {"2024-05-10_2024-05-15": 0.0}
    assert metadata["thresholds"].value == {"2024-05-10_2024-05-15": None}
    with rasterio.open(
        store.change_maps("beauce", "2024-04-01") / "2024-05-10_2024-05-15_change.tif"
    ) as mask:
        assert (mask.read(1) == 255).all()
