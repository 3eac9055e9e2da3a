"""The `matter_pretrained` asset's export: the product level from the STAC collection, and the
weights and card written beside the checkpoint; its training folder, replaced only when done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from assets import model as model_assets
from assets.model import EXPORT, TRAINING, export_model, product_level_of
from assets.partitions import CONFIG
from assets.resources import DataStore
from matter_model.patch_store import StoreInfo, record_manifest, write_shard
from matter_model.pretrained import CARD, load
from tests.matter_model.tiny_model import tiny_checkpoint


def test_product_level_comes_from_the_collection() -> None:
    assert product_level_of("sentinel-2-l2a") == "L2A"
    assert product_level_of("Sentinel-2-L1C") == "L1C"
    with pytest.raises(ValueError, match="'landsat-c2-l2'.*stac.collection"):
        product_level_of("landsat-c2-l2")


def test_export_lands_beside_the_checkpoint(tmp_path: Path) -> None:
    store = DataStore(root=str(tmp_path))
    tiny_checkpoint(store.model_dir / "checkpoint.pt", patch_store=str(store.patch_store))
    card = export_model(store)
    folder = store.model_dir / EXPORT
    assert json.loads((folder / CARD).read_text()) == card
    assert card["inputs"]["product_level"] == "L2A" and card["inputs"]["gsd_m"] == 10
    assert "could not be read" in card["data"]["manifest_digest_reason"]  # no store here
    load(folder)


def test_the_card_cites_the_manifest_digest_patch_triplets_recorded(tmp_path: Path) -> None:
    store = DataStore(root=str(tmp_path))
    empty = np.zeros((0, 9, 8, 8), np.float32)
    info = StoreInfo(tuple(CONFIG.tiling.bands), 8)
    write_shard(store.patch_store, "beauce__2024-04-01", info, empty, empty, empty, pd.DataFrame())
    recorded = record_manifest(
        store.patch_store, "beauce__2024-04-01", "a" * 64, ["S2_x"], product_level="L2A"
    )
    tiny_checkpoint(store.model_dir / "checkpoint.pt", patch_store=str(store.patch_store))
    card = export_model(store)
    assert card["data"]["manifest_digest"] == recorded["manifest_digest"]
    assert card["data"]["stac_items"] == 1
    exported = json.loads((store.model_dir / EXPORT / CARD).read_text())
    assert exported["data"]["manifest_digest"] == recorded["manifest_digest"]


def test_a_killed_retraining_leaves_the_last_model_whole(tmp_path: Path) -> None:
    """Training writes into its own folder: a run killed mid-way (its checkpoint of step 1 left
    there) must not touch the model, and the next run starts from an empty folder."""
    store = DataStore(root=str(tmp_path))
    model = store.model_dir / "checkpoint.pt"
    tiny_checkpoint(model)
    before = model.read_bytes()
    work = store.model_dir / TRAINING
    assert model_assets.training_command(store)[-1] == str(work)
    tiny_checkpoint(work / "checkpoint.pt", seed=1)  # what the killed run left
    model_assets.start_training(store)
    assert work.is_dir() and not any(work.iterdir())
    assert model.read_bytes() == before
    tiny_checkpoint(work / "checkpoint.pt", seed=2)  # the next run, finished
    (work / "metrics.json").write_text(json.dumps({"checkpoint": str(work / "checkpoint.pt")}))
    finished = (work / "checkpoint.pt").read_bytes()
    model_assets.publish_training(store)
    assert model.read_bytes() == finished != before and not work.exists()
    metrics = json.loads((store.model_dir / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(model)
