"""End-to-end pretraining on a small synthetic patch store: run, NaN stop, exact resume, load."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from matter_model.checkpoint import CheckpointError, load_checkpoint
from matter_model.matter import DEFAULT_BANDS
from matter_model.patch_store import StoreInfo, write_shard
from matter_model.train import (
    CONFIG_DIR,
    TrainingDivergedError,
    load_config,
    load_model,
    main,
    train,
)

N_TRIPLETS = 40


def textures(rng: np.random.Generator, n: int) -> np.ndarray:
    """Striped textures with a random orientation, period and spectrum per crop (n, 9, 32, 32)."""
    yy, xx = np.mgrid[:32, :32]
    angle = rng.uniform(0, np.pi, n)[:, None, None]
    period = rng.uniform(3, 9, n)[:, None, None]
    phase = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
    spectrum = rng.uniform(0.05, 0.4, (n, 9, 1, 1))
    return (spectrum * (1 + 0.5 * phase[:, None])).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    anchor = textures(rng, N_TRIPLETS)
    gain = rng.uniform(0.8, 1.2, (N_TRIPLETS, 1, 1, 1)).astype(np.float32)
    positive = anchor * gain + rng.normal(0, 0.01, anchor.shape).astype(np.float32)
    negative = textures(rng, N_TRIPLETS)
    table = pd.DataFrame({"region": ["synthetic"] * N_TRIPLETS})
    write_shard(root, "s0", StoreInfo(DEFAULT_BANDS, 32), anchor, positive, negative, table)
    return root


def tiny_config(store, out, **overrides):
    settings = dict(
        patch_store=str(store),
        out=str(out),
        steps=4,
        batch_size=4,
        num_workers=0,
        subpatches_per_crop=8,
        checkpoint_every=2,
        log_every=1,
        model=dict(width=8, blocks=[1], tern_layers=1, codewords=4, embed_dim=8),
    )
    return load_config(None, **{**settings, **overrides})


def test_demo_config_is_small_and_complete():
    demo = load_config(CONFIG_DIR / "demo.yaml")
    default = load_config()
    assert demo.keys() == default.keys()
    assert default["subpatch"] == 7 and default["subpatches_per_crop"] == 100
    assert default["crop_size"] == 32 and default["bands"] == list(DEFAULT_BANDS)
    assert demo["steps"] < default["steps"]


def test_train_end_to_end_and_load_model(store, tmp_path):
    logs = []
    metrics = train(tiny_config(store, tmp_path, steps=6), log=logs.append)
    assert metrics["steps"] == 6 and len(metrics["loss_history"]) == 6
    assert all(math.isfinite(v) for v in metrics["loss_history"])
    assert metrics["samples_per_s"] > 0
    assert any("samples/s" in line for line in logs)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["final_loss"] == metrics["final_loss"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 0
    model, config = load_model(tmp_path / "checkpoint.pt")
    assert not model.training and config["bands"] == list(DEFAULT_BANDS)
    with torch.no_grad():
        emb = model.embed(torch.rand(1, 9, 16, 16), window=13)
    assert emb.shape == (1, 8, 16, 16)


def test_resume_equals_uninterrupted(store, tmp_path):
    full = train(tiny_config(store, tmp_path / "full"), log=lambda _: None)
    train(tiny_config(store, tmp_path / "split", steps=2), log=lambda _: None)
    resumed = train(tiny_config(store, tmp_path / "split", resume=True), log=lambda _: None)
    assert resumed["loss_history"] == full["loss_history"]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path, capsys):
    config = tiny_config(store, tmp_path, steps=8, lr=1e30, checkpoint_every=1)
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        train(config, log=lambda _: None)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert 1 <= state["step"] < 8
    assert all(math.isfinite(v) for v in state["loss_history"])
    cli_config = tmp_path / "tiny.yaml"
    cli_config.write_text(yaml.safe_dump({"model": config["model"], "subpatches_per_crop": 8}))
    args = ["--config", str(cli_config), "--patch-store", str(store), "--lr", "1e30"]
    args += ["--out", str(tmp_path / "cli"), "--steps", "8", "--batch-size", "4"]
    args += ["--num-workers", "0"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code != 0
    assert "error:" in capsys.readouterr().err


def test_load_model_names_a_missing_or_corrupt_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*missing.pt"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_model(bad)
