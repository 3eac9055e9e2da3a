"""Pretraining on a small synthetic store: run, NaN stop, exact resume, kill -9, DDP, bad input."""

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from matter_model.bands import MATTER_BANDS
from matter_model.checkpoint import CheckpointError, load_checkpoint
from matter_model.patch_store import PatchStoreError, StoreInfo, write_shard
from matter_model.train import (
    CONFIG_DIR,
    ConfigError,
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
    write_shard(root, "s0", StoreInfo(MATTER_BANDS, 32), anchor, positive, negative, table)
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
    model = {**settings.pop("model"), **overrides.pop("model", {})}
    return load_config(None, **{**settings, **overrides, "model": model})


def test_demo_config_is_small_and_complete():
    demo = load_config(CONFIG_DIR / "demo.yaml")
    default = load_config()
    assert demo.keys() == default.keys()
    assert default["subpatch"] == 7 and default["subpatches_per_crop"] == 100
    assert default["crop_size"] == 32 and default["bands"] == list(MATTER_BANDS)
    assert demo["steps"] < default["steps"]


def test_train_end_to_end_and_load_model(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="matter_model.train")
    metrics = train(tiny_config(store, tmp_path, steps=6))
    assert metrics["steps"] == 6 and len(metrics["loss_history"]) == 6
    assert all(math.isfinite(v) for v in metrics["loss_history"])
    assert metrics["samples_per_s"] > 0
    assert any("samples/s" in line for line in caplog.messages)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["final_loss"] == metrics["final_loss"]
    assert (tmp_path / "loss_curve.png").stat().st_size > 0
    model, config = load_model(tmp_path / "checkpoint.pt")
    assert not model.training and config["bands"] == list(MATTER_BANDS)
    assert config["normalisation"] == "reflectance"  # the store's
    assert torch.load(tmp_path / "checkpoint.pt")["normalisation"] == "reflectance"
    with torch.no_grad():
        emb = model.embed(torch.rand(1, 9, 16, 16), window=13)
    assert emb.shape == (1, 8, 16, 16)


def test_resume_equals_uninterrupted(store, tmp_path):
    full = train(tiny_config(store, tmp_path / "full"))
    train(tiny_config(store, tmp_path / "split", steps=2))
    resumed = train(tiny_config(store, tmp_path / "split", resume=True))
    # The uninterrupted run is in this process, the resumed one in another: BLAS may sum in
    # another order there, so equal to float32 rounding rather than bit for bit.
    np.testing.assert_allclose(resumed["loss_history"], full["loss_history"], rtol=1e-5)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_augmented_positives_change_training_and_resume_exactly(store, tmp_path):
    augment = dict(gain=0.1, offset=0.1, noise=0.05, shift_px=1)
    plain = train(tiny_config(store, tmp_path / "plain"))
    full = train(tiny_config(store, tmp_path / "full", augment=augment))
    assert full["loss_history"] != plain["loss_history"]
    train(tiny_config(store, tmp_path / "split", steps=2, augment=augment))
    resumed = train(tiny_config(store, tmp_path / "split", resume=True, augment=augment))
    np.testing.assert_allclose(resumed["loss_history"], full["loss_history"], rtol=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(store, tmp_path, capsys):
    config = tiny_config(store, tmp_path, steps=8, lr=1e30, checkpoint_every=1)
    with pytest.raises(TrainingDivergedError, match="last good checkpoint"):
        train(config)
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


def write_tiny_yaml(path, config):
    """The tiny config as a YAML file for the CLI (patch store and out are passed as flags)."""
    keys = ("steps", "batch_size", "num_workers", "subpatches_per_crop", "checkpoint_every")
    path.write_text(yaml.safe_dump({"model": config["model"], **{k: config[k] for k in keys}}))
    return path


def run_cli(*args, wait=True):
    command = [sys.executable, "-m", *args]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(store, tmp_path):
    """torchrun with 2 CPU processes (gloo) and the same global batch: the same losses."""
    config = tiny_config(store, tmp_path / "one", steps=3, model={"norm": "group"})
    single = train(config)
    cfg_file = write_tiny_yaml(tmp_path / "tiny.yaml", config)
    run_cli(
        "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "matter_model.train", "--config", str(cfg_file), "--patch-store", str(store),
        "--out", str(tmp_path / "two"), "--set", "model.norm=group",
    )  # fmt: skip
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["processes"] == 2
    np.testing.assert_allclose(metrics["loss_history"], single["loss_history"], rtol=1e-4)


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(store, tmp_path):
    config = tiny_config(store, tmp_path / "full", steps=30, checkpoint_every=1)
    full = train(config)
    cfg_file = write_tiny_yaml(tmp_path / "tiny.yaml", config)
    out = tmp_path / "killed"
    args = ["matter_model.train", "--config", str(cfg_file), "--patch-store", str(store)]
    args += ["--out", str(out)]
    process = run_cli(*args, wait=False)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(out / "checkpoint.pt")["step"]
    assert killed_at < 30 and not (out / "metrics.json").exists()
    run_cli(*args, "--resume")
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["steps_this_run"] == 30 - killed_at
    # The uninterrupted run is in this process, the resumed one in another: BLAS may sum in
    # another order there, so equal to float32 rounding rather than bit for bit.
    np.testing.assert_allclose(resumed["loss_history"], full["loss_history"], rtol=1e-5)


def test_store_with_other_bands_fails_before_training(tmp_path):
    bands = ("B02", "B03", "B04", "B08")
    data = np.zeros((4, 4, 32, 32), np.float32)
    table = pd.DataFrame({"region": ["x"] * 4})
    write_shard(tmp_path / "store", "s0", StoreInfo(bands, 32), data, data, data, table)
    with pytest.raises(PatchStoreError, match=r"missing \['B05', 'B06', 'B07', 'B11', 'B12'\]"):
        train(tiny_config(tmp_path / "store", tmp_path / "out"))
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_empty_store_fails_before_training(tmp_path):
    empty = np.zeros((0, 9, 32, 32), np.float32)
    table = pd.DataFrame({"region": []})
    write_shard(tmp_path / "store", "s0", StoreInfo(MATTER_BANDS, 32), empty, empty, empty, table)
    with pytest.raises(PatchStoreError, match="has no patches"):
        train(tiny_config(tmp_path / "store", tmp_path / "out"))
    with pytest.raises(PatchStoreError, match="no patch store"):
        train(tiny_config(tmp_path / "nowhere", tmp_path / "out"))
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_unknown_config_keys_are_named_with_the_valid_ones(store, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"\['stpes'\] \(did you mean 'steps'\?\); valid keys"):
        load_config(None, stpes=3)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"widht": 8}}))
    with pytest.raises(ConfigError, match=r"bad.yaml.*\['model.widht'\] \(did you mean 'model.w"):
        load_config(bad)
    config = tiny_config(store, tmp_path)
    config["model"]["depth"] = 3
    with pytest.raises(ConfigError, match="model.depth"):
        train(config)
    with pytest.raises(SystemExit) as exit_info:
        main(["--patch-store", str(store), "--set", "model.colour=red"])
    assert exit_info.value.code == 1
    assert "model.colour" in capsys.readouterr().err


def test_resume_from_another_architecture_names_the_mismatch(store, tmp_path):
    train(tiny_config(store, tmp_path, steps=2))
    wider = tiny_config(store, tmp_path, resume=True, model={"width": 16})
    with pytest.raises(ValueError, match="width: 8 there, 16 here"):
        train(wider)
    other_bands = tiny_config(store, tmp_path, resume=True, bands=list(MATTER_BANDS[:4]))
    with pytest.raises(ValueError, match="trained on bands"):
        train(other_bands)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
