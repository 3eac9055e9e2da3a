"""OSCD change detection: unsupervised (MATTER, the same network untrained, CVA) and fine-tuned.

Unsupervised, as the MATTER authors evaluated it (:mod:`matter_model.change_detection`): the
features of the ``--window`` px window around every pixel at both dates, their L2 distance,
Gaussian smoothing, an Otsu threshold per city; precision / recall / F1 of the change class per
city and micro over every valid pixel of every city, for the checkpoint's network (``matter``),
the same network from random initialisation (``untrained``) and change vector analysis
(``cva``), side by side in one run.

Fine-tuned (``--finetune``): a Siamese head on the encoder (both dates' embeddings, their
absolute difference, a small convolutional head, a change logit per pixel), trained end to end
on random crops of the training cities and scored on the test cities, once from the checkpoint
and once from random initialisation, with the same head initialisation, crops and steps.
The probability threshold is the one that maximises F1 on the training cities (the test cities
are never looked at before scoring). Default split: the labelled cities of ``test.txt`` are the
test cities; where the release has no test labels (the shared copy), every second labelled city
(sorted) is held out.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from matter_model.change_detection import (
    DEFAULT_SIGMA,
    ConfusionCounts,
    as_reflectance,
    compare_with_baselines,
    confusion_counts,
    model_features,
)
from matter_model.checkpoint import build_model, load_model
from matter_model.datasets.oscd import OSCD, OSCDCity, OSCDError
from matter_model.matter import Matter

DEFAULT_WINDOW = 13  # the authors' feature window for change maps
METHODS = ("matter", "untrained", "cva")


def _names(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """OSCD's options (the shared --checkpoint, --out and --device come from the CLI)."""
    parser.add_argument("--root", type=Path, required=True, help="folder of the OSCD release")
    parser.add_argument("--cities", help="comma-separated (default: every labelled city)")
    parser.add_argument("--bands", help="comma-separated band subset (default: the checkpoint's)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="feature window, px")
    parser.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="Gaussian sigma, px")
    parser.add_argument("--maps", type=Path, help="folder for MATTER's change-map PNGs")
    parser.add_argument("--seed", type=int, default=0, help="untrained network, head, crops")
    tune = parser.add_argument_group("fine-tuned change detection")
    tune.add_argument("--finetune", action="store_true", help="also train and test a Siamese head")
    tune.add_argument("--train-cities", help="comma-separated (default: see the description)")
    tune.add_argument("--test-cities", help="comma-separated (default: see the description)")
    tune.add_argument("--steps", type=int, default=300, help="training steps per model")
    tune.add_argument("--batch-size", type=int, default=4, help="crop pairs per step")
    tune.add_argument("--crop", type=int, default=64, help="training crop size, px")
    tune.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")


def check_bands(
    checkpoint: Path, trained: Sequence[str], asked: Sequence[str] | None
) -> tuple[str, ...]:
    """The bands to read: the checkpoint's, or ``asked`` when it is the same set in order."""
    if asked is None or tuple(asked) == tuple(trained):
        return tuple(trained)
    what = "band count" if len(asked) != len(trained) else "bands"
    raise OSCDError(
        f"checkpoint {checkpoint} was trained on {len(trained)} bands {list(trained)}; "
        f"--bands asks for {len(asked)} {list(asked)} ({what} differ). Drop --bands or pass "
        "a checkpoint trained on those bands."
    )


def _summary(name: str, micro: dict[str, Any]) -> str:
    return f"  {name:22s} P {micro['precision']:.4f} R {micro['recall']:.4f} F1 {micro['f1']:.4f}"


def _per_city(results: dict[str, Any]) -> dict[str, Any]:
    return {"per_city": results["per_pair"], "micro": results["micro"]}


def unsupervised(
    model: Matter,
    config: dict[str, Any],
    dataset: OSCD,
    cities: Sequence[str],
    window: int = DEFAULT_WINDOW,
    sigma: float = DEFAULT_SIGMA,
    maps: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """``{method: {"per_city": {city: scores + threshold}, "micro": scores}}`` for METHODS.

    Cities stream one at a time; with ``maps`` MATTER's change map of each city (dates, truth,
    prediction) is written there as ``<city>.png``.
    """
    pairs = dataset.iter_pairs(cities, bands=config["bands"])
    results = compare_with_baselines(
        model, config, {"oscd": pairs}, window=window, sigma=sigma, previews=maps
    )["oscd"]
    return {method: _per_city(results[method]) for method in METHODS}


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
        """Change probability (H, W) of a whole city: the encoder tiled, the head on the map."""
        extract = model_features(
            self.encoder, self.window, device=str(device), normalize=as_reflectance
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
    """The probability threshold (0.01 .. 0.99) with the highest micro F1 over the given maps."""
    p = np.concatenate([pr[v] for pr, v in zip(probabilities, valid, strict=True)])
    t = np.concatenate([lb[v] for lb, v in zip(labels, valid, strict=True)])
    edges = np.linspace(0.0, 1.0, 101)
    changed = np.histogram(p[t], edges)[0][::-1].cumsum()[::-1]  # change pixels >= edge
    unchanged = np.histogram(p[~t], edges)[0][::-1].cumsum()[::-1]
    tp, fp, fn = changed[1:-1], unchanged[1:-1], changed[0] - changed[1:-1]
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
    log: Callable[[str], None] = print,
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
            log(f"  step {step + 1}/{steps} loss {np.mean(losses[-50:]):.4f}")
    return losses


def finetune(
    encoders: dict[str, Matter],
    dataset: OSCD,
    bands: Sequence[str],
    train_cities: Sequence[str],
    test_cities: Sequence[str],
    args: argparse.Namespace,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a Siamese head on each encoder of ``encoders``, test on ``test_cities``."""
    overlap = sorted(set(train_cities) & set(test_cities))
    if overlap or not train_cities or not test_cities:
        raise OSCDError(
            f"fine-tuning needs disjoint, non-empty train and test cities; got train "
            f"{list(train_cities)}, test {list(test_cities)}"
        )
    device = torch.device(args.device)
    train_set = [dataset.load(c, bands, require_label=True) for c in train_cities]
    report: dict[str, Any] = {
        "train_cities": list(train_cities),
        "test_cities": list(test_cities),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "lr": args.lr,
    }
    for name, encoder in encoders.items():
        log(f"fine-tuning the Siamese head on the {name} encoder")
        torch.manual_seed(args.seed)  # the same head initialisation for every encoder
        net = SiameseChangeNet(encoder, args.window).to(device)
        losses = train_siamese(
            net, train_set, args.steps, args.batch_size, args.crop, args.lr, args.seed, device, log
        )
        threshold = best_f1_threshold(
            [net.predict(c, device) for c in train_set],
            [c.label for c in train_set],
            [c.valid for c in train_set],
        )
        per_city, total = {}, ConfusionCounts()
        for city_name in test_cities:
            city = dataset.load(city_name, bands, require_label=True)
            counts = confusion_counts(net.predict(city, device) > threshold, city.label, city.valid)
            per_city[city_name] = {**counts.as_dict(), "threshold": threshold}
            total = total + counts
        report[name] = {
            "per_city": per_city,
            "micro": total.as_dict(),
            "threshold": threshold,
            "final_loss": float(np.mean(losses[-50:])),
        }
    return report


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Unsupervised change detection on the chosen cities; with ``--finetune`` the Siamese
    heads too. Returns the metrics written to ``--out``."""
    dataset = OSCD(args.root)
    device = torch.device(args.device)
    model, config = load_model(args.checkpoint, map_location=device)
    bands = check_bands(args.checkpoint, config["bands"], _names(args.bands))
    labelled = dataset.labelled_cities()
    cities = _names(args.cities) or labelled
    unlabelled = [c for c in cities if c not in labelled]
    if unlabelled:
        raise OSCDError(
            f"cities {unlabelled} have no change label under {args.root}; labelled: {labelled}"
        )
    if not cities:
        raise OSCDError(f"no labelled city under {args.root}")
    log(f"oscd: checkpoint {args.checkpoint}, bands {list(bands)}, cities {cities}")
    metrics: dict[str, Any] = {
        "task": "oscd",
        "checkpoint": str(args.checkpoint),
        "root": str(args.root),
        "bands": list(bands),
        "window": args.window,
        "sigma": args.sigma,
        "cities": cities,
        **unsupervised(model, config, dataset, cities, args.window, args.sigma, args.maps),
    }
    for method in METHODS:
        log(_summary(method, metrics[method]["micro"]))
    if args.finetune:
        train_cities, test_cities = default_split(dataset, cities)
        train_cities = _names(args.train_cities) or train_cities
        test_cities = _names(args.test_cities) or test_cities
        torch.manual_seed(int(config.get("seed", 0)))
        encoders = {"matter": model, "random_init": build_model(config).to(device)}
        metrics["finetune"] = finetune(
            encoders, dataset, bands, train_cities, test_cities, args, log
        )
        for name in encoders:
            log(_summary(f"fine-tuned {name}", metrics["finetune"][name]["micro"]))
    return metrics
