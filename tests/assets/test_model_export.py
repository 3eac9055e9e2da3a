"""The `matter_pretrained` asset's export: the product level from the STAC collection, and the
weights and card written beside the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assets.model import EXPORT, export_model, product_level_of
from assets.resources import DataStore
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
