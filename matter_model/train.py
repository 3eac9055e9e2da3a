"""MATTER pretraining on a patch store.

``python -m matter_model.train --config cfg.yaml [--steps N] [--batch-size B] [--out DIR]
[--patch-store DIR] [--device cpu|cuda] [--resume] [--set model.norm=group] ...``: the YAML is
merged over ``configs/default.yaml`` and flags override both; a key that ``default.yaml`` lacks is
an error that lists the valid keys. ``train(config)`` is the same as a function.

Data-parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) every rank joins a process group (gloo on
CPU, nccl on CUDA), wraps the model in DistributedDataParallel and takes its contiguous slice of
each step's global batch of ``batch_size`` triplets. The ranks all-gather their embeddings, so the
InfoNCE loss (whose negatives are the whole batch's sub-patches) is the loss of the global batch,
the same as one process would compute. Only rank 0 writes checkpoints, metrics, the PNG and logs.

The run is deterministic given the seed: the model is initialised from ``seed``, the triplets of
step s come from a permutation drawn from (seed, epoch of s), the sub-patch positions and the
positive crops' perturbations (``augment``, :mod:`matter_model.augment`) from (seed, s), so
``--resume`` from ``out/checkpoint.pt`` continues the exact loss trajectory of an uninterrupted
run. A NaN or infinite loss stops the run with ``TrainingDivergedError`` and leaves
the last good checkpoint in place.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from matter_model.atomic_io import atomic_write_text
from matter_model.augment import PositiveJitter
from matter_model.checkpoint import build_model, load_checkpoint, load_model, save_checkpoint
from matter_model.logs import configure_cli_logging
from matter_model.loss import sample_positions, subpatch_info_nce
from matter_model.patch_store import ROLES, TripletDataset

# Named, not __name__: under `python -m matter_model.train` that is "__main__".
logger = logging.getLogger("matter_model.train")

__all__ = ["ConfigError", "TrainingDivergedError", "load_config", "load_model", "main", "train"]

CONFIG_DIR = Path(__file__).parent / "configs"
CHECKPOINT = "checkpoint.pt"
_SEED_STRIDE = 1_000_003


def _adam(parameters: Iterable[nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        parameters, lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"])
    )


def _sgd(parameters: Iterable[nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        parameters,
        lr=float(cfg["lr"]),
        momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight_decay"]),
    )


OptimizerFactory = Callable[[Iterable[nn.Parameter], dict[str, Any]], torch.optim.Optimizer]
# Optimisers by the config's ``optimizer``; each reads ``lr``, ``weight_decay`` and its own keys.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam": _adam,
    "sgd": _sgd,
}


def build_optimizer(
    parameters: Iterable[nn.Parameter], cfg: dict[str, Any]
) -> torch.optim.Optimizer:
    """The optimiser ``cfg['optimizer']`` names (Adam for configs older than the key)."""
    name = cfg.get("optimizer", "adam")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](parameters, cfg)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class ConfigError(ValueError):
    """The training config has a key that ``configs/default.yaml`` does not define."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _defaults() -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())


def check_keys(config: dict[str, Any], reference: dict[str, Any], where: str = "") -> None:
    """Raise ConfigError naming keys of ``config`` unknown to ``reference``, the nearest valid
    key of each, and the valid ones."""
    unknown = sorted(set(config) - set(reference))
    if unknown:
        nearest = [
            repr(where + match[0])
            for key in unknown
            if (match := difflib.get_close_matches(key, list(reference), n=1))
        ]
        hint = f" (did you mean {', '.join(nearest)}?)" if nearest else ""
        raise ConfigError(
            f"unknown config key(s) {[where + key for key in unknown]}{hint}; valid keys: "
            f"{sorted(where + key for key in reference)}"
        )
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(reference[key], dict):
            check_keys(value, reference[key], f"{where}{key}.")


def load_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """``configs/default.yaml``, merged with the YAML at ``path`` and then ``overrides``."""
    defaults = _defaults()
    config = defaults
    if path is not None:
        from_file = yaml.safe_load(Path(path).read_text()) or {}
        try:
            check_keys(from_file, defaults)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        config = _merge(config, from_file)
    check_keys(overrides, defaults)
    return _merge(config, overrides)


class StepBatchSampler(Sampler[list[int]]):
    """The batches of steps ``start..stop-1``; step s's batch depends only on (seed, s).

    With ``world`` > 1 ranks, rank ``rank`` gets its contiguous ``batch_size // world`` slice of
    each global batch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if size < batch_size:
            raise ValueError(
                f"the patch store holds {size} triplets, fewer than batch_size={batch_size}"
            )
        if batch_size % world:
            raise ValueError(f"batch_size={batch_size} does not split over {world} processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.stop = start, stop
        self.per_epoch = size // batch_size
        local = batch_size // world
        self.slice = slice(rank * local, (rank + 1) * local)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = None, None
        for step in range(self.start, self.stop):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                generator = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + e)
                epoch, perm = e, torch.randperm(self.size, generator=generator)
            yield perm[k * self.batch_size : (k + 1) * self.batch_size][self.slice].tolist()


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


class _GatherBatches(torch.autograd.Function):
    """All-gather along dim 0 over the process group; the gradient flows back to each slice."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        ctx.rows = local.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank = dist.get_rank()
        return grad[rank * ctx.rows : (rank + 1) * ctx.rows]


def _start_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _check_resumable(state: dict[str, Any], cfg: dict[str, Any], path: Path) -> None:
    """Raise ValueError naming what differs between a checkpoint's model and this config's."""
    saved = state.get("config", {})
    if saved.get("bands") != cfg["bands"]:
        raise ValueError(
            f"cannot resume from {path}: it was trained on bands {saved.get('bands')}, this "
            f"config has {cfg['bands']}"
        )
    # Keys a checkpoint's config lacks had their defaults: an older checkpoint still resumes.
    defaults = _defaults()
    theirs = {**defaults["model"], **saved.get("model", {})}
    ours = cfg["model"]
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if differ:
        detail = ", ".join(f"{k}: {theirs.get(k)} there, {ours.get(k)} here" for k in differ)
        raise ValueError(
            f"cannot resume from {path}: its model architecture differs from this config's "
            f"({detail}); use another --out or the checkpoint's model settings"
        )
    theirs_opt = saved.get("optimizer", defaults["optimizer"])
    ours_opt = cfg.get("optimizer", defaults["optimizer"])
    if theirs_opt != ours_opt:
        raise ValueError(
            f"cannot resume from {path}: it was trained with {theirs_opt}, this config has "
            f"{ours_opt}"
        )


def train(config: dict[str, Any]) -> dict[str, Any]:
    """Pretrain as ``config`` says (see ``configs/default.yaml``); return the run's metrics.

    Progress goes to this module's logger (``matter_model.train``), from rank 0 only."""
    check_keys(config, _defaults())
    cfg = copy.deepcopy(config)
    if not cfg.get("patch_store"):
        raise ValueError("no patch store: set `patch_store` in the config or pass --patch-store")
    rank, world, device = _start_distributed(_device(cfg["device"]))
    try:
        return _train(cfg, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _open_store(cfg: dict[str, Any]) -> TripletDataset:
    """The config's patch store, checked to hold crops of the config's size."""
    dataset = TripletDataset(cfg["patch_store"], cfg["bands"])
    if dataset.info.patch_size != cfg["crop_size"]:
        raise ValueError(
            f"the store at {cfg['patch_store']} holds {dataset.info.patch_size} px crops; the "
            f"config's crop_size is {cfg['crop_size']}"
        )
    return dataset


def _resume(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: dict[str, Any],
    path: Path,
    device: torch.device,
) -> tuple[int, list[float]]:
    """Load the checkpoint at ``path`` into the model, the optimiser and the RNGs; return its
    step and loss history."""
    state = load_checkpoint(path, device)
    _check_resumable(state, cfg, path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(
            f"cannot resume from {path}: its weights do not fit the model: {exc}"
        ) from exc
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    return int(state["step"]), list(state["loss_history"])


@dataclass
class _Step:
    """What every step of one run shares: the network, the settings, the device."""

    net: nn.Module
    cfg: dict[str, Any]
    size: int
    device: torch.device
    world: int

    def __post_init__(self) -> None:
        self.jitter = PositiveJitter.from_config(self.cfg["augment"])
        self.amp = bool(self.cfg["amp"]) and self.device.type == "cuda"

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """The InfoNCE loss of ``batch`` at ``step``; positions and perturbations from (seed,
        step)."""
        cfg, subpatch = self.cfg, int(self.cfg["subpatch"])
        batch_size, count = int(cfg["batch_size"]), int(cfg["subpatches_per_crop"])
        generator = torch.Generator().manual_seed(int(cfg["seed"]) * _SEED_STRIDE + step)
        batch["positive"] = self.jitter(batch["positive"], generator)
        crops = torch.cat([batch[role] for role in ROLES]).to(self.device, non_blocking=True)
        positions = sample_positions(batch_size, count, self.size, subpatch, generator)
        negative_positions = sample_positions(batch_size, count, self.size, subpatch, generator)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            anchor, positive, negative = self.net(crops, window=subpatch).chunk(3)
        if self.world > 1:
            anchor, positive, negative = (
                _GatherBatches.apply(t) for t in (anchor, positive, negative)
            )
        return subpatch_info_nce(
            anchor,
            positive,
            negative,
            positions,
            negative_positions,
            float(cfg["temperature"]),
            subpatch,
        )


def _check_finite(loss: torch.Tensor, step: int, checkpoint_path: Path) -> None:
    """Stop with TrainingDivergedError when the loss is NaN or infinite, naming what is kept."""
    if torch.isfinite(loss):
        return
    kept = (
        f"the last good checkpoint is {checkpoint_path}"
        if checkpoint_path.exists()
        else "no checkpoint was written yet"
    )
    raise TrainingDivergedError(
        f"loss is {loss.item()} at step {step + 1}; stopping ({kept}). Lower `lr`."
    )


def _train(
    cfg: dict[str, Any],
    rank: int,
    world: int,
    device: torch.device,
) -> dict[str, Any]:
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / CHECKPOINT
    dataset = _open_store(cfg)

    torch.manual_seed(int(cfg["seed"]))
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model.parameters(), cfg)
    start, history = 0, []
    if cfg.get("resume"):
        start, history = _resume(model, optimizer, cfg, checkpoint_path, device)
        if rank == 0:
            logger.info("resumed from %s at step %d", checkpoint_path, start)

    def checkpoint(step: int) -> None:
        if rank == 0:
            _save(checkpoint_path, model, optimizer, step, cfg, dataset.info.normalisation, history)

    loader = _loader(dataset, cfg, start, rank, world, device)
    net = DistributedDataParallel(model) if world > 1 else model
    run = _Step(net, cfg, dataset.info.patch_size, device, world)
    model.train()
    wall = _loop(run, loader, optimizer, start, history, checkpoint, checkpoint_path, rank == 0)
    checkpoint(int(cfg["steps"]))
    return _finish(cfg, history, start, wall, device, world, checkpoint_path, rank == 0)


def _save(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    cfg: dict[str, Any],
    normalisation: str,
    history: list[float],
) -> None:
    """Write the checkpoint of ``step``: weights, optimiser, RNGs, config and loss history."""
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "rng": _rng_state(),
            "config": cfg,
            "bands": list(cfg["bands"]),
            "normalisation": normalisation,
            "loss_history": history,
        },
    )


def _loader(
    dataset: TripletDataset,
    cfg: dict[str, Any],
    start: int,
    rank: int,
    world: int,
    device: torch.device,
) -> DataLoader:
    """This rank's batches of the steps from ``start`` on (see :class:`StepBatchSampler`)."""
    workers = int(cfg["num_workers"])
    sampler = StepBatchSampler(
        len(dataset),
        int(cfg["batch_size"]),
        int(cfg["seed"]),
        start,
        int(cfg["steps"]),
        rank,
        world,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )


def _loop(
    run: _Step,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    start: int,
    history: list[float],
    checkpoint: Callable[[int], None],
    checkpoint_path: Path,
    logs: bool,
) -> float:
    """The steps from ``start`` on, each loss appended to ``history``, a line logged every
    ``log_every`` steps (when ``logs``) and a checkpoint every ``checkpoint_every``; return the
    seconds they took."""
    steps, batch_size = int(run.cfg["steps"]), int(run.cfg["batch_size"])
    log_every, checkpoint_every = int(run.cfg["log_every"]), int(run.cfg["checkpoint_every"])
    began = tick = time.perf_counter()
    for step, batch in zip(range(start, steps), loader, strict=True):
        loss = run.loss(batch, step)
        _check_finite(loss, step, checkpoint_path)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        now = time.perf_counter()
        if logs and ((step + 1) % log_every == 0 or step + 1 == steps):
            throughput = batch_size / (now - tick)
            logger.info(
                "step %d/%d loss %.4f %.1f samples/s", step + 1, steps, history[-1], throughput
            )
        tick = now
        if (step + 1) % checkpoint_every == 0:
            checkpoint(step + 1)
    return time.perf_counter() - began


def _finish(
    cfg: dict[str, Any],
    history: list[float],
    start: int,
    wall: float,
    device: torch.device,
    world: int,
    checkpoint_path: Path,
    writes: bool,
) -> dict[str, Any]:
    """The run's metrics; written with the loss curve beside the checkpoint by rank 0."""
    steps, batch_size = int(cfg["steps"]), int(cfg["batch_size"])
    metrics = {
        "final_loss": history[-1] if history else None,
        "steps": steps,
        "steps_this_run": steps - start,
        "batch_size": batch_size,
        "samples_per_s": (steps - start) * batch_size / wall if wall > 0 else None,
        "wall_s": wall,
        "device": str(device),
        "processes": world,
        "checkpoint": str(checkpoint_path),
        "loss_history": history,
    }
    if writes:
        out = checkpoint_path.parent
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
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
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="any config key, dotted for nested ones (model.norm=group); VALUE is YAML",
    )
    args = vars(parser.parse_args(argv))
    path = args.pop("config")
    overrides: dict[str, Any] = {}
    for setting in args.pop("settings"):
        key, sep, value = setting.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got {setting!r}")
        *parents, leaf = key.split(".")
        node = overrides
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    overrides = _merge(overrides, {k: v for k, v in args.items() if v is not None})
    return load_config(path, **overrides)


class _ToPipes(logging.Handler):
    """Forwards this module's log messages to Dagster through the Pipes session."""

    def __init__(self, pipes: Any) -> None:
        super().__init__(logging.INFO)
        self.pipes = pipes

    def emit(self, record: logging.LogRecord) -> None:
        self.pipes.log.info(record.getMessage())


def _train_under_pipes(config: dict[str, Any]) -> None:
    """Train, with logs, failures and final metrics reported to Dagster through Pipes."""
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        forward = _ToPipes(pipes)
        logger.addHandler(forward)
        try:
            metrics = train(config)
        except (TrainingDivergedError, ValueError, RuntimeError) as exc:
            pipes.log.error(f"training failed: {exc}")
            raise
        finally:
            logger.removeHandler(forward)
        pipes.report_asset_materialization(
            metadata={k: v for k, v in metrics.items() if k != "loss_history"}
        )


def main(argv: list[str] | None = None) -> None:
    """The CLI; reports through Dagster Pipes when launched by it (DAGSTER_PIPES_CONTEXT set).

    The progress lines go to stdout either way; under Pipes they are forwarded to Dagster too."""
    configure_cli_logging()
    try:
        config = _parse(argv)
        if os.environ.get("DAGSTER_PIPES_CONTEXT"):
            _train_under_pipes(config)
        else:
            train(config)
    except (TrainingDivergedError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
