"""OSCD fine-tuned change detection: a Siamese head on the pretrained encoder, against the same
head on the encoder from random initialisation, over several seeds.

The head takes both dates' embeddings (the residual encoding of the ``--window`` px window around
each pixel), their absolute difference, two 3 x 3 convolutions and a change logit per pixel. It
is trained end to end (encoder included) on random crops of the training cities with flips and
rotations, and scored on the test cities: precision / recall / F1 of the change class per city
and micro. The probability threshold is the one that maximises F1 on the training cities (the
test cities are never looked at before scoring). Default split: the labelled cities of
``test.txt`` are the test cities; where the release has no test labels (the shared copy), every
second labelled city (sorted) is held out.

Seeds: a fine-tuning depends on its head initialisation and crops, and OSCD holds out only a
handful of test cities, so one run says little; the comparison is repeated for each seed of
``--seeds`` (default: ``--seed`` and the two after it). Within a seed both encoders get the same
head initialisation, crops, flips / rotations and steps; the random encoder is drawn anew from
the seed (a stream of its own), so its spread covers its initialisation too. Every seed starts
from a fresh copy of the pretrained encoder, so a seed's figures do not depend on which other
seeds run. The report holds each seed's figures (``per_seed``: per encoder ``per_city``,
``micro``, ``threshold``, ``final_loss``; and the ``difference`` pretrained minus random of micro
precision / recall / F1), and over the seeds their ``mean`` and sample standard deviation
(``std``, ddof 1; null for one seed). The top-level ``matter`` and ``random_init`` are the first
seed's, as a single-seed run wrote them.

Steps: ``DEFAULT_STEPS`` is sized so that the default run (three seeds, two encoders, threshold
and scoring included) of the demo network (``configs/oscd.yaml``) takes at most about half an
hour on an idle 2-core CPU, bounded by its cost on one thread; the measured cost is in
``docs/results.md``. On a GPU, raise ``--steps``. On a CPU that other jobs share, give the run one
thread (``OMP_NUM_THREADS=1``): the encoder's many small operations make two threads that wait on
each other several times slower than one.

The training cities are held in memory (OSCD's fourteen train cities are about 0.6 GB as float32
at 13 bands; the authors' nine bands take less); test cities stream one at a time, once a seed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from matter_model.change_detection import model_features
from matter_model.checkpoint import build_model
from matter_model.datasets.oscd import OSCD, OSCDCity, OSCDError
from matter_model.downstream.oscd import add_dataset_arguments, names, setup, summary
from matter_model.inputs import Preparation, as_reflectance, input_preparation
from matter_model.matter import Matter
from matter_model.metrics import ConfusionCounts, confusion_counts

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 250
DEFAULT_SEED_COUNT = 3
METRICS = ("precision", "recall", "f1")
# A seed -> the encoder to fine-tune under it (a fresh one each call: fine-tuning changes it).
EncoderFactory = Callable[[int], Matter]


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated distinct integers."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"seeds must be integers, got {text!r}") from error
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and non-empty, got {text!r}")
    return seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fine-tuning options (the shared --checkpoint, --out and --device come from the CLI)."""
    add_dataset_arguments(parser)
    parser.add_argument("--train-cities", help="comma-separated (default: see the description)")
    parser.add_argument("--test-cities", help="comma-separated (default: see the description)")
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        help=f"comma-separated seeds, one fine-tuning of each encoder per seed (default: "
        f"{DEFAULT_SEED_COUNT} seeds from --seed: 0,1,2)",
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="training steps per encoder and seed"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="crop pairs per step")
    parser.add_argument("--crop", type=int, default=64, help="training crop size, px")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")


class SiameseChangeNet(nn.Module):
    """Encoder embeddings of both dates -> |difference| -> small conv head -> change logit."""

    def __init__(self, encoder: Matter, window: int, hidden: int = 32) -> None:
        super().__init__()
        self.encoder, self.window = encoder, window
        self.head = nn.Sequential(
            nn.Conv2d(encoder.embed_dim, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, image_1: torch.Tensor, image_2: torch.Tensor) -> torch.Tensor:
        """Change logits (B, H, W) of two batches of images (B, C, H, W)."""
        features = self.encoder.embed(torch.cat([image_1, image_2]), self.window)
        f1, f2 = features.chunk(2)
        return self.head((f1 - f2).abs())[:, 0]

    def predict(self, city: OSCDCity, device: torch.device) -> np.ndarray:
        """Change probability (H, W) of a whole city (its images already prepared for the
        encoder): the encoder tiled, the head on the map."""
        extract = model_features(
            self.encoder, self.window, device=str(device), prepare=as_reflectance
        )
        diff = np.abs(extract(city.image_1) - extract(city.image_2))
        self.eval()
        with torch.no_grad():
            logits = self.head(torch.from_numpy(diff)[None].to(device))[0, 0]
        return torch.sigmoid(logits).cpu().numpy()


def default_split(dataset: OSCD, labelled: Sequence[str]) -> tuple[list[str], list[str]]:
    """Train / test cities: the official split where both have labels, else every second
    labelled city (sorted) held out for testing."""
    official_test = [c for c in dataset.cities("test") if c in labelled]
    if official_test:
        return [c for c in labelled if c not in official_test], official_test
    ordered = sorted(labelled)
    return ordered[0::2], ordered[1::2]


def _random_crops(
    cities: Sequence[OSCDCity], count: int, size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, ...]:
    """``count`` aligned crops (date 1, date 2, label, valid) with random flips / rotations,
    cities drawn in proportion to their area."""
    area = np.array([c.valid.size for c in cities], dtype=np.float64)
    crops: list[list[np.ndarray]] = [[], [], [], []]
    for k in rng.choice(len(cities), size=count, p=area / area.sum()):
        city = cities[k]
        h, w = city.valid.shape
        y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        for out, array in zip(
            crops, (city.image_1, city.image_2, city.label, city.valid), strict=True
        ):
            crop = np.rot90(array[..., y0 : y0 + size, x0 : x0 + size], turns, axes=(-2, -1))
            out.append(np.ascontiguousarray(crop[..., ::-1] if flip else crop))
    return tuple(torch.from_numpy(np.stack(c)) for c in crops)


def best_f1_threshold(
    probabilities: Sequence[np.ndarray], labels: Sequence[np.ndarray], valid: Sequence[np.ndarray]
) -> float:
    """The probability threshold (0.01 .. 0.99; change = p >= it) with the highest micro F1
    over the given maps."""
    p = np.concatenate([pr[v] for pr, v in zip(probabilities, valid, strict=True)])
    t = np.concatenate([lb[v] for lb, v in zip(labels, valid, strict=True)])
    edges = np.linspace(0.0, 1.0, 101)
    changed = np.histogram(p[t], edges)[0][::-1].cumsum()[::-1]  # change pixels >= edge
    unchanged = np.histogram(p[~t], edges)[0][::-1].cumsum()[::-1]
    tp, fp, fn = changed[1:], unchanged[1:], changed[0] - changed[1:]
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return float(edges[1:-1][int(np.argmax(f1))])


def train_siamese(
    net: SiameseChangeNet,
    cities: Sequence[OSCDCity],
    steps: int,
    batch_size: int,
    crop: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> list[float]:
    """Train ``net`` end to end on random crops; return the loss of each step.

    Binary cross-entropy over valid pixels, the change class weighted by
    sqrt(unchanged / changed pixels of the training cities): change is a few % of OSCD pixels.
    """
    small = [c.name for c in cities if min(c.valid.shape) < crop]
    if small:
        raise OSCDError(f"cities {small} are smaller than the {crop} px crop; lower --crop")
    changed = sum(int((c.label & c.valid).sum()) for c in cities)
    total = sum(int(c.valid.sum()) for c in cities)
    if changed == 0:
        raise OSCDError(f"the training cities {[c.name for c in cities]} hold no change pixel")
    pos_weight = torch.tensor(math.sqrt((total - changed) / changed), device=device)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    losses = []
    for step in range(steps):
        image_1, image_2, label, valid = (
            t.to(device) for t in _random_crops(cities, batch_size, crop, rng)
        )
        logits = net(image_1, image_2)
        loss = F.binary_cross_entropy_with_logits(
            logits[valid], label[valid].float(), pos_weight=pos_weight
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            logger.info("  step %d/%d loss %.4f", step + 1, steps, np.mean(losses[-50:]))
    return losses


def seeds_of(args: argparse.Namespace) -> list[int]:
    """The seeds to run: ``--seeds``, else ``DEFAULT_SEED_COUNT`` seeds from ``--seed``."""
    seeds = getattr(args, "seeds", None)
    return list(seeds) if seeds else [args.seed + k for k in range(DEFAULT_SEED_COUNT)]


def random_encoder(config: Mapping[str, Any], seed: int, device: torch.device) -> Matter:
    """The network of ``config`` from random initialisation, drawn from ``seed`` on a stream of
    its own (not the head's: the same torch seed would repeat the head's draws in the encoder)."""
    torch.manual_seed(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
    return build_model(dict(config)).to(device)


def train_net(
    encoder: Matter, train_set: Sequence[OSCDCity], args: argparse.Namespace, seed: int
) -> tuple[SiameseChangeNet, dict[str, Any]]:
    """The Siamese head on ``encoder`` trained under ``seed``, with its F1-best threshold on the
    training cities and final loss (the mean of the last 50 steps)."""
    device = torch.device(args.device)
    torch.manual_seed(seed)  # the same head initialisation (and any dropout) for every encoder
    net = SiameseChangeNet(encoder, args.window).to(device)
    losses = train_siamese(
        net, train_set, args.steps, args.batch_size, args.crop, args.lr, seed, device
    )
    threshold = best_f1_threshold(
        [net.predict(c, device) for c in train_set],
        [c.label for c in train_set],
        [c.valid for c in train_set],
    )
    return net, {"threshold": threshold, "final_loss": float(np.mean(losses[-50:]))}


def score(
    nets: Mapping[str, tuple[SiameseChangeNet, float]],
    test_cities: Sequence[str],
    load: Callable[[str], OSCDCity],
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """``{name: {"per_city", "micro"}}`` of each (net, threshold) on the test cities, each city
    loaded once for all the nets."""
    per_city: dict[str, dict[str, Any]] = {name: {} for name in nets}
    totals = {name: ConfusionCounts() for name in nets}
    for city_name in test_cities:
        city = load(city_name)
        for name, (net, threshold) in nets.items():
            counts = confusion_counts(
                net.predict(city, device) >= threshold, city.label, city.valid
            )
            per_city[name][city_name] = {**counts.as_dict(), "threshold": threshold}
            totals[name] = totals[name] + counts
    return {name: {"per_city": per_city[name], "micro": totals[name].as_dict()} for name in nets}


def finetune_seed(
    encoders: Mapping[str, EncoderFactory],
    seed: int,
    train_set: Sequence[OSCDCity],
    test_cities: Sequence[str],
    load: Callable[[str], OSCDCity],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One seed's comparison: per encoder ``per_city``, ``micro``, ``threshold`` and
    ``final_loss``; with two encoders, the ``difference`` first minus second of micro P/R/F1."""
    nets, fitted = {}, {}
    for name, make in encoders.items():
        logger.info("seed %s: fine-tuning the Siamese head on the %s encoder", seed, name)
        net, fitted[name] = train_net(make(seed), train_set, args, seed)
        nets[name] = (net, fitted[name]["threshold"])
    scores = score(nets, test_cities, load, torch.device(args.device))
    report: dict[str, Any] = {name: {**scores[name], **fitted[name]} for name in encoders}
    if len(encoders) == 2:
        first, second = (report[name]["micro"] for name in encoders)
        report["difference"] = {m: first[m] - second[m] for m in METRICS}
    return report


def aggregate(per_seed: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean and sample standard deviation (ddof 1; None for one seed) over the seeds of each
    encoder's micro P/R/F1 and of the difference."""
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for entry in next(iter(per_seed.values())):
        figures = [r[entry].get("micro", r[entry]) for r in per_seed.values()]
        values = {m: np.array([f[m] for f in figures], dtype=np.float64) for m in METRICS}
        mean[entry] = {m: float(v.mean()) for m, v in values.items()}
        std[entry] = {m: float(v.std(ddof=1)) if v.size > 1 else None for m, v in values.items()}
    return mean, std


def finetune(
    encoders: Mapping[str, EncoderFactory],
    dataset: OSCD,
    bands: Sequence[str],
    train_cities: Sequence[str],
    test_cities: Sequence[str],
    args: argparse.Namespace,
    prepare: Preparation = as_reflectance,
) -> dict[str, Any]:
    """Train a Siamese head on a fresh encoder of each factory of ``encoders`` for each seed,
    test it on ``test_cities``; the report described in the module docstring.

    Both dates of every city are prepared by ``prepare`` (the encoders' training inputs).
    """
    overlap = sorted(set(train_cities) & set(test_cities))
    if overlap or not train_cities or not test_cities:
        raise OSCDError(
            f"fine-tuning needs disjoint, non-empty train and test cities; got train "
            f"{list(train_cities)}, test {list(test_cities)}"
        )

    def load(name: str) -> OSCDCity:
        city = dataset.load(name, bands, require_label=True)
        return dataclasses.replace(
            city, image_1=prepare(city.image_1), image_2=prepare(city.image_2)
        )

    train_set = [load(c) for c in train_cities]
    seeds = seeds_of(args)
    per_seed = {}
    for seed in seeds:
        started = time.perf_counter()
        per_seed[str(seed)] = finetune_seed(encoders, seed, train_set, test_cities, load, args)
        logger.info("seed %s done in %.0f s", seed, time.perf_counter() - started)
    mean, std = aggregate(per_seed)
    first = per_seed[str(seeds[0])]
    return {
        "train_cities": list(train_cities),
        "test_cities": list(test_cities),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "lr": args.lr,
        "seeds": seeds,
        **{name: first[name] for name in encoders},
        "per_seed": per_seed,
        "mean": mean,
        "std": std,
    }


def mean_std_summary(name: str, mean: Mapping[str, float], std: Mapping[str, Any]) -> str:
    """One line of micro P / R / F1 as mean ± standard deviation over the seeds."""
    parts = [
        f"{label} {mean[m]:.4f}" + ("" if std[m] is None else f" ± {std[m]:.4f}")
        for label, m in zip(("P", "R", "F1"), METRICS, strict=True)
    ]
    return f"  {name:22s} " + " ".join(parts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune on the checkpoint's encoder and on randomly initialised ones, for each seed;
    the metrics written to ``--out``."""
    task = setup(args)
    train_cities, test_cities = default_split(task.dataset, task.cities)
    train_cities = names(args.train_cities) or train_cities
    test_cities = names(args.test_cities) or test_cities
    logger.info(
        "oscd-finetune: checkpoint %s, train %s, test %s",
        args.checkpoint,
        train_cities,
        test_cities,
    )
    device = torch.device(args.device)
    encoders: dict[str, EncoderFactory] = {
        "matter": lambda seed: copy.deepcopy(task.model),
        "random_init": lambda seed: random_encoder(task.config, seed, device),
    }
    metrics = {
        "task": "oscd-finetune",
        "checkpoint": str(args.checkpoint),
        "root": str(args.root),
        "bands": list(task.bands),
        "window": args.window,
        **finetune(
            encoders,
            task.dataset,
            task.bands,
            train_cities,
            test_cities,
            args,
            input_preparation(task.config),
        ),
    }
    for seed, report in metrics["per_seed"].items():
        for name in encoders:
            logger.info("%s", summary(f"seed {seed} {name}", report[name]["micro"]))
    logger.info("fine-tuned, micro over %d seeds (mean ± std):", len(metrics["seeds"]))
    for name in [*encoders, "difference"]:
        logger.info("%s", mean_std_summary(name, metrics["mean"][name], metrics["std"][name]))
    return metrics
