"""MATTER pretraining on a patch store.

``python -m matter_model.train --config cfg.yaml [--steps N] [--batch-size B] [--out DIR]
[--patch-store DIR] [--device cpu|cuda] [--resume] ...``: the YAML is merged over
``configs/default.yaml`` and flags override both. ``train(config)`` is the same as a function.

The run is deterministic given the seed: the model is initialised from ``seed``, the triplets of
step s come from a permutation drawn from (seed, epoch of s) and the sub-patch positions from
(seed, s), so ``--resume`` from ``out/checkpoint.pt`` continues the exact loss trajectory of an
uninterrupted run. A NaN or infinite loss stops the run with ``TrainingDivergedError`` and leaves
the last good checkpoint in place.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, Sampler

from matter_model.checkpoint import build_model, load_checkpoint, load_model, save_checkpoint
from matter_model.loss import sample_positions, subpatch_info_nce
from matter_model.patch_store import ROLES, TripletDataset

__all__ = ["TrainingDivergedError", "load_config", "load_model", "main", "train"]

CONFIG_DIR = Path(__file__).parent / "configs"
CHECKPOINT = "checkpoint.pt"
_SEED_STRIDE = 1_000_003


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """``configs/default.yaml``, merged with the YAML at ``path`` and then ``overrides``."""
    config = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())
    if path is not None:
        config = _merge(config, yaml.safe_load(Path(path).read_text()) or {})
    return _merge(config, overrides)


class StepBatchSampler(Sampler[list[int]]):
    """The batches of steps ``start..stop-1``; step s's batch depends only on (seed, s)."""

    def __init__(self, size: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        if size < batch_size:
            raise ValueError(
                f"the patch store holds {size} triplets, fewer than batch_size={batch_size}"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.stop = start, stop
        self.per_epoch = size // batch_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = None, None
        for step in range(self.start, self.stop):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                generator = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + e)
                epoch, perm = e, torch.randperm(self.size, generator=generator)
            yield perm[k * self.batch_size : (k + 1) * self.batch_size].tolist()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plot(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("MATTER pretraining")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    return device


def train(config: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Pretrain as ``config`` says (see ``configs/default.yaml``); return the run's metrics."""
    cfg = copy.deepcopy(config)
    if not cfg.get("patch_store"):
        raise ValueError("no patch store: set `patch_store` in the config or pass --patch-store")
    device = _device(cfg["device"])
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / CHECKPOINT
    seed, steps, batch_size = int(cfg["seed"]), int(cfg["steps"]), int(cfg["batch_size"])

    dataset = TripletDataset(cfg["patch_store"], cfg["bands"])
    if dataset.info.patch_size != cfg["crop_size"]:
        raise ValueError(
            f"the store at {cfg['patch_store']} holds {dataset.info.patch_size} px crops; the "
            f"config's crop_size is {cfg['crop_size']}"
        )

    torch.manual_seed(seed)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"])
    )
    start, history = 0, []
    if cfg.get("resume"):
        state = load_checkpoint(checkpoint_path, device)
        for key in ("bands", "model"):
            if state["config"][key] != cfg[key]:
                raise ValueError(
                    f"cannot resume from {checkpoint_path}: its {key} {state['config'][key]} "
                    f"differ from this config's {cfg[key]}"
                )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        start, history = int(state["step"]), list(state["loss_history"])
        log(f"resumed from {checkpoint_path} at step {start}")

    def checkpoint(step: int) -> None:
        save_checkpoint(
            checkpoint_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "rng": _rng_state(),
                "config": cfg,
                "bands": list(cfg["bands"]),
                "loss_history": history,
            },
        )

    workers = int(cfg["num_workers"])
    loader = DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(len(dataset), batch_size, seed, start, steps),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    amp = bool(cfg["amp"]) and device.type == "cuda"
    size, subpatch, count = (
        dataset.info.patch_size,
        int(cfg["subpatch"]),
        int(cfg["subpatches_per_crop"]),
    )
    model.train()
    began = time.perf_counter()
    tick = began
    for step, batch in zip(range(start, steps), loader, strict=True):
        crops = torch.cat([batch[role] for role in ROLES]).to(device, non_blocking=True)
        generator = torch.Generator().manual_seed(seed * _SEED_STRIDE + step)
        b = crops.shape[0] // 3
        positions = sample_positions(b, count, size, subpatch, generator)
        negative_positions = sample_positions(b, count, size, subpatch, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            anchor, positive, negative = model.embed(crops, window=subpatch).chunk(3)
        loss = subpatch_info_nce(
            anchor, positive, negative, positions, negative_positions, float(cfg["temperature"])
        )
        if not torch.isfinite(loss):
            kept = (
                f"the last good checkpoint is {checkpoint_path}"
                if checkpoint_path.exists()
                else "no checkpoint was written yet"
            )
            raise TrainingDivergedError(
                f"loss is {loss.item()} at step {step + 1}; stopping ({kept}). Lower `lr`."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        now = time.perf_counter()
        if (step + 1) % int(cfg["log_every"]) == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} loss {history[-1]:.4f} {b / (now - tick):.1f} samples/s")
        tick = now
        if (step + 1) % int(cfg["checkpoint_every"]) == 0:
            checkpoint(step + 1)
    wall = time.perf_counter() - began
    checkpoint(steps)

    metrics = {
        "final_loss": history[-1] if history else None,
        "steps": steps,
        "steps_this_run": steps - start,
        "batch_size": batch_size,
        "samples_per_s": (steps - start) * batch_size / wall if wall > 0 else None,
        "wall_s": wall,
        "device": str(device),
        "checkpoint": str(checkpoint_path),
        "loss_history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _plot(history, out / "loss_curve.png")
    return metrics


def _parse(argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m matter_model.train", description=__doc__)
    parser.add_argument("--config", help="YAML merged over configs/default.yaml")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--out")
    parser.add_argument("--patch-store", dest="patch_store")
    parser.add_argument("--device")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-workers", type=int, dest="num_workers")
    parser.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
    parser.add_argument(
        "--resume", action="store_true", default=None, help="continue out/checkpoint.pt"
    )
    args = vars(parser.parse_args(argv))
    path = args.pop("config")
    return load_config(path, **{k: v for k, v in args.items() if v is not None})


def _train_under_pipes(config: dict[str, Any]) -> None:
    """Train, with logs, failures and final metrics reported to Dagster through Pipes."""
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:

        def log(message: str) -> None:
            print(message, flush=True)
            pipes.log.info(message)

        try:
            metrics = train(config, log=log)
        except (TrainingDivergedError, ValueError, RuntimeError) as exc:
            pipes.log.error(f"training failed: {exc}")
            raise
        pipes.report_asset_materialization(
            metadata={k: v for k, v in metrics.items() if k != "loss_history"}
        )


def main(argv: list[str] | None = None) -> None:
    """The CLI; reports through Dagster Pipes when launched by it (DAGSTER_PIPES_CONTEXT set)."""
    config = _parse(argv)
    try:
        if os.environ.get("DAGSTER_PIPES_CONTEXT"):
            _train_under_pipes(config)
        else:
            train(config, log=lambda message: print(message, flush=True))
    except (TrainingDivergedError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
