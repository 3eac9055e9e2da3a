"""Training throughput of the full MATTER model at one or more configs, and the loader alone.

A patch store feeds, for each ``--config`` (a name in ``matter_model/configs``, ``demo`` by
default):

* ``train()`` with that config on ``--device``: samples (triplets) per second over the steps
  after ``--warmup`` steps, timed from the loop's own per-step log lines (each waits for the
  step's loss, so on CUDA the times are the device's); bf16 autocast on CUDA when the config's
  ``amp`` is true, as training runs;
* the DataLoader alone, built as training builds it (same sampler, batch size and workers):
  triplets per second, and patches per second (3 patches, anchor / positive / negative, each).

The store is ``--patch-store`` (a real one, for instance the OSCD store of ``make
oscd-pretrain``), else a synthetic one (random 9-band 32 px triplets, written with
``matter_model.patch_store.write_shard``) in a temporary directory.

Prints a table and writes ``benchmarks/results/train.json`` (``train-cuda.json`` on CUDA).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from matter_model.atomic_io import atomic_write_text
from matter_model.patch_store import ROLES, StoreInfo, TripletDataset, write_shard
from matter_model.train import CONFIG_DIR, StepBatchSampler, load_config, train

RESULTS = Path(__file__).parent / "results"


def synthetic_store(root: Path, triplets: int, bands: list[str], size: int) -> Path:
    """A one-shard store of random triplets."""
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(0, 0.4, (triplets, len(bands), size, size)).astype(np.float32)]
    arrays += [rng.uniform(0, 0.4, arrays[0].shape).astype(np.float32) for _ in range(2)]
    table = pd.DataFrame({"region": ["synthetic"] * triplets})
    write_shard(root, "bench", StoreInfo(tuple(bands), size), *arrays, table)
    return root


class _Stamps(logging.Handler):
    """The time of each step line that training logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("step "):
            self.times.append(time.perf_counter())


def train_throughput(config: dict, warmup: int) -> float:
    """Samples/s of ``train(config)`` over the steps after ``warmup``."""
    logger, stamped = logging.getLogger("matter_model.train"), _Stamps()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(stamped)
    try:
        train(config)
    finally:
        logger.removeHandler(stamped)
        logger.setLevel(level)
    stamps = stamped.times
    timed = stamps[warmup : config["steps"]]
    return (len(timed) - 1) * config["batch_size"] / (timed[-1] - timed[0])


def loader_throughput(config: dict, batches: int) -> float:
    """Triplets/s of the training DataLoader alone over ``batches`` batches (after the first)."""
    dataset = TripletDataset(config["patch_store"], config["bands"])
    sampler = StepBatchSampler(len(dataset), config["batch_size"], config["seed"], 0, batches + 1)
    workers = int(config["num_workers"])
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = sum(batch[ROLES[0]].shape[0] for batch in iterator)
    return count / (time.perf_counter() - start)


def measure_config(name: str, args: argparse.Namespace, store: Path, tmp: Path) -> dict:
    """Training's samples/s and the loader's triplets/s of configs/``name``.yaml."""
    config = load_config(
        CONFIG_DIR / f"{name}.yaml",
        patch_store=str(store),
        out=str(tmp / f"run-{name}"),
        device=args.device,
        steps=args.warmup + args.steps,
        log_every=1,
        checkpoint_every=10**9,
    )
    samples = train_throughput(config, args.warmup)
    triplets = loader_throughput(config, args.batches)
    return {
        "batch_size": config["batch_size"],
        "num_workers": config["num_workers"],
        "amp_bf16": bool(config["amp"]) and args.device.startswith("cuda"),
        "model": config["model"],
        "timed_steps": args.steps,
        "train_samples_per_s": round(samples, 2),
        "loader_triplets_per_s": round(triplets, 1),
        "loader_patches_per_s": round(3 * triplets, 1),
        "loader_over_train": round(triplets / samples, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="a config's name (repeatable)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--out", type=Path, help="the JSON to write (default: results/train.json, train-cuda.json)"
    )
    parser.add_argument("--patch-store", type=Path, help="a real store (default: synthetic)")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed")
    parser.add_argument("--warmup", type=int, default=5, help="training steps not timed")
    parser.add_argument("--batches", type=int, default=100, help="loader batches timed")
    parser.add_argument("--triplets", type=int, default=512, help="synthetic store's size")
    args = parser.parse_args()
    names = args.config or ["demo"]

    with tempfile.TemporaryDirectory() as tmp:
        store = args.patch_store
        if store is None:
            base = load_config(CONFIG_DIR / "demo.yaml")
            store = synthetic_store(
                Path(tmp) / "store", args.triplets, base["bands"], base["crop_size"]
            )
        configs = {name: measure_config(name, args, store, Path(tmp)) for name in names}

    device = torch.device(args.device)
    report = {
        "benchmark": "MATTER training and its DataLoader",
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "patch_store": "synthetic" if args.patch_store is None else args.patch_store.name,
        "configs": configs,
    }
    print(f"training on {device.type} ({torch.get_num_threads()} threads)")
    for name, row in configs.items():
        print(
            f"  {name:<10} train {row['train_samples_per_s']:9.1f} samples/s "
            f"(batch {row['batch_size']}, bf16 {row['amp_bf16']}); loader "
            f"{row['loader_patches_per_s']:.1f} patches/s ({row['num_workers']} workers), "
            f"{row['loader_over_train']}x training's need"
        )
    out = args.out or RESULTS / (
        "train.json" if device.type == "cpu" else f"train-{device.type}.json"
    )
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
