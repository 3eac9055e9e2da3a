"""Exported weights that declare their inputs: the round trip to ``matter_model.load``, the card's
fields, refused inputs, damaged exports, atomic reruns, and a loader free of Dagster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import matter_model
from matter_model.bands import MATTER_BANDS
from matter_model.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from matter_model.export import ExportInputError, export, main
from matter_model.inputs import SCENE_STANDARDISED, standardise
from matter_model.patch_store import StoreInfo, manifest_digest, record_manifest, write_shard
from matter_model.pretrained import CARD, WEIGHTS, ExportError, InputMismatchError, load
from tests.matter_model.tiny_model import TINY_MODEL, tiny_checkpoint

METRICS = {"task": "oscd", "protocol": "ours", "micro": {"f1": 0.5}}


def _checkpoint(path: Path, store: Path | None = None, **state: object) -> Path:
    """A tiny checkpoint with a training history and ``state`` on top."""
    tiny_checkpoint(path, patch_store=str(store) if store else None)
    full = load_checkpoint(path)
    full.update({"step": 12, "loss_history": [3.0, 2.5], **state})
    return save_checkpoint(path, full)


def _dn(seed: int = 0, shape: tuple[int, ...] = (9, 16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(1000, 4000, shape).astype(np.uint16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, export folder) of the tiny network, L2A, with evaluation metrics."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = _checkpoint(root / "checkpoint.pt")
    (root / "metrics.json").write_text(json.dumps(METRICS))
    export(checkpoint, root / "out", "L2A", gsd_m=10, metrics=root / "metrics.json")
    return checkpoint, root / "out"


def test_exported_weights_give_the_checkpoints_outputs(exported: tuple[Path, Path]) -> None:
    checkpoint, out = exported
    reference, config = load_model(checkpoint)
    model, prepare = matter_model.load(out)
    dn = _dn()
    x = prepare(dn, MATTER_BANDS, "L2A")
    expected_input = dn.astype(np.float32) * np.float32(1e-4) + np.float32(-0.1)
    np.testing.assert_allclose(x[0].numpy(), expected_input, rtol=1e-6)
    with torch.no_grad():
        ours = model.embed(x, window=prepare.window)
        theirs = reference.embed(x, window=config["subpatch"])
    assert not model.training and torch.equal(ours, theirs)


def test_the_card_declares_the_inputs_and_the_run(exported: tuple[Path, Path]) -> None:
    checkpoint, out = exported
    card = json.loads((out / CARD).read_text())
    inputs = card["inputs"]
    assert inputs["bands"] == list(MATTER_BANDS) and inputs["product_level"] == "L2A"
    assert inputs["reflectance"]["scale"] == 1e-4 and inputs["reflectance"]["offset"] == -0.1
    assert inputs["normalisation"]["method"] == "reflectance"
    assert inputs["gsd_m"] == 10
    assert (inputs["crop_size"], inputs["subpatch"], inputs["window"]) == (32, 7, 7)
    model, _ = load_model(checkpoint)
    assert card["architecture"]["model"] == load_checkpoint(checkpoint)["config"]["model"]
    assert card["architecture"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["training"]["steps"] == 12 and card["training"]["loss"]["final"] == 2.5
    data = card["data"]
    assert data["manifest_digest"] is None and "no patch store" in data["manifest_digest_reason"]
    assert data["stac_items"] is None and data["stac_items_reason"]
    assert card["evaluation"]["protocol"] == "ours"
    assert card["evaluation"]["figures"] == {"micro": {"f1": 0.5}}
    readme = (out / "README.md").read_text()
    assert "B02, B03" in readme and "L2A" in readme and "matter_model.load" in readme


def test_card_reads_what_the_patch_store_records(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    meta = {
        "format": "matter-patch-store",
        "version": 1,
        "values": SCENE_STANDARDISED,
        "product_level": "L1C",
        "gsd_m": 10,
        "manifest_digest": "abc123",
        "stac_items": 42,
    }
    (store / "store.json").write_text(json.dumps(meta))
    # a version 1 store.json (`values`) and a checkpoint of its time (`inputs`): both are read
    checkpoint = _checkpoint(tmp_path / "c.pt", store, inputs=SCENE_STANDARDISED)
    card = export(checkpoint, tmp_path / "out")
    assert card["inputs"]["normalisation"]["method"] == SCENE_STANDARDISED
    assert card["data"]["normalisation"] == SCENE_STANDARDISED
    assert card["inputs"]["product_level"] == "L1C" and card["inputs"]["gsd_m"] == 10
    assert card["inputs"]["reflectance"]["offset"] == 0.0
    assert card["data"]["manifest_digest"] == "abc123" and card["data"]["stac_items"] == 42
    assert card["evaluation"] is None
    _, prepare = load(tmp_path / "out")
    dn = _dn(1)
    expected = standardise(dn.astype(np.float32) * np.float32(1e-4))
    np.testing.assert_allclose(prepare(dn, MATTER_BANDS, "l1c")[0].numpy(), expected, atol=1e-5)
    with pytest.raises(ExportInputError, match="--product-level L2A contradicts.*L1C"):
        export(checkpoint, tmp_path / "out", "L2A")


def test_card_cites_the_provenance_of_the_patch_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    empty = np.zeros((0, len(MATTER_BANDS), 8, 8), np.float32)
    write_shard(
        store, "r__2024-04-01", StoreInfo(MATTER_BANDS, 8), empty, empty, empty, pd.DataFrame()
    )
    recorded = record_manifest(
        store, "r__2024-04-01", "f" * 64, ["S2A_1", "S2B_2"], product_level="L2A", gsd_m=10.0
    )
    card = export(_checkpoint(tmp_path / "c.pt", store), tmp_path / "out")
    digest = manifest_digest(["f" * 64])
    assert card["data"]["manifest_digest"] == recorded["manifest_digest"] == digest
    assert card["data"]["stac_items"] == 2 and "shards" not in card["data"]
    assert card["inputs"]["product_level"] == "L2A" and card["inputs"]["gsd_m"] == 10.0


def test_export_needs_a_product_level(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "c.pt")
    with pytest.raises(ExportInputError, match="pass --product-level L1C or L2A"):
        export(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_prepare_refuses_other_bands_or_levels_naming_both(exported: tuple[Path, Path]) -> None:
    _, prepare = load(exported[1])
    dn = _dn()
    bands = list(MATTER_BANDS)
    with pytest.raises(InputMismatchError, match=r"bands \['B01'.*trained on \['B02'"):
        prepare(dn, ["B01", *bands[1:]], "L2A")
    with pytest.raises(InputMismatchError, match="another order"):
        prepare(dn, bands[::-1], "L2A")
    with pytest.raises(InputMismatchError, match="level 'L1C'.*trained on 'L2A'"):
        prepare(dn, bands, "L1C")
    with pytest.raises(InputMismatchError, match="shape"):
        prepare(dn[:4], bands, "L2A")
    holed = dn.astype(np.float32)
    holed[0, 0, 0] = np.nan
    with pytest.raises(InputMismatchError, match="fill invalid pixels"):
        prepare(holed, bands, "L2A")


def test_prepare_takes_a_batch_and_an_offset(exported: tuple[Path, Path]) -> None:
    _, prepare = load(exported[1])
    dn = _dn(shape=(2, 9, 8, 8))
    x = prepare(torch.from_numpy(dn.astype(np.int32)), MATTER_BANDS, "L2A", offset=0.0)
    assert x.shape == (2, 9, 8, 8) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), dn * np.float32(1e-4), rtol=1e-6)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_damaged_or_missing_files_are_clear_errors(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="no model_card.json.*matter_model.export"):
        load(tmp_path)
    missing = _copy(exported[1], tmp_path / "missing")
    (missing / WEIGHTS).unlink()
    with pytest.raises(ExportError, match="no model.safetensors.*incomplete"):
        load(missing)
    corrupt = _copy(exported[1], tmp_path / "corrupt")
    data = bytearray((corrupt / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (corrupt / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match the SHA-256.*corrupt"):
        load(corrupt)
    bad_card = _copy(exported[1], tmp_path / "bad_card")
    (bad_card / CARD).write_text('{"format": "matter-model-card", "vers')
    with pytest.raises(ExportError, match="unreadable or corrupt"):
        load(bad_card)
    (bad_card / CARD).write_text('{"format": "something-else"}')
    with pytest.raises(ExportError, match="not a matter-model-card v1"):
        load(bad_card)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export(tmp_path / "nope.pt", tmp_path / "out", "L2A")


def test_weights_that_do_not_fit_their_card_are_a_clear_error(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = _copy(exported[1], tmp_path / "other")
    card = json.loads((folder / CARD).read_text())
    card["architecture"]["model"]["width"] = 16
    (folder / CARD).write_text(json.dumps(card))
    with pytest.raises(ExportError, match="do not fit the architecture"):
        load(folder)


def test_rerun_replaces_the_export_whole(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "c.pt")
    out = tmp_path / "out"
    export(checkpoint, out, "L2A", gsd_m=10)
    (out / "stale.txt").write_text("from an older export")
    export(checkpoint, out, "L2A", gsd_m=20)
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", CARD, WEIGHTS])
    assert json.loads((out / CARD).read_text())["inputs"]["gsd_m"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "out"]  # no hidden leftovers
    load(out)


def test_command_line_writes_the_export_and_reports_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = _checkpoint(tmp_path / "c.pt")
    main(
        ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--product-level", "l2a"]
    )
    assert (tmp_path / "out" / WEIGHTS).is_file()
    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out2")])
    assert stop.value.code == 1 and "--product-level" in capsys.readouterr().err


def test_loading_imports_neither_dagster_nor_the_pipelines(exported: tuple[Path, Path]) -> None:
    code = (
        "import sys, matter_model\n"
        f"model, prepare = matter_model.load({str(exported[1])!r})\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'dagster', 'pipelines', 'assets', 'zarr', 'pandas'})\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.stdout.strip() == "[]"


def test_tiny_model_settings_reach_the_card(exported: tuple[Path, Path]) -> None:
    card = json.loads((exported[1] / CARD).read_text())
    assert {k: card["architecture"]["model"][k] for k in TINY_MODEL} == TINY_MODEL
