"""OSCD fine-tuned change detection: a Siamese head on the pretrained encoder, against the same
head on the encoder from random initialisation, in one run.

The head takes both dates' embeddings (the residual encoding of the ``--window`` px window around
each pixel), their absolute difference, two 3 x 3 convolutions and a change logit per pixel. It
is trained end to end (encoder included) on random crops of the training cities with flips and
rotations, and scored on the test cities: precision / recall / F1 of the change class per city
and micro. Both encoders get the same head initialisation, crops and steps. The probability
threshold is the one that maximises F1 on the training cities (the test cities are never looked
at before scoring). Default split: the labelled cities of ``test.txt`` are the test cities; where
the release has no test labels (the shared copy), every second labelled city (sorted) is held out.

The training cities are held in memory (OSCD's fourteen train cities are about 0.6 GB as float32
at 13 bands; the authors' nine bands take less); test cities stream one at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from matter_model.change_detection import model_features
from matter_model.checkpoint import build_model
from matter_model.datasets.oscd import OSCD, OSCDCity, OSCDError
from matter_model.downstream.oscd import add_dataset_arguments, names, setup, summary
from matter_model.inputs import Normalizer, as_reflectance, input_normalizer
from matter_model.matter import Matter
from matter_model.metrics import ConfusionCounts, confusion_counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The fine-tuning options (the shared --checkpoint, --out and --device come from the CLI)."""
    add_dataset_arguments(parser)
    parser.add_argument("--train-cities", help="comma-separated (default: see the description)")
    parser.add_argument("--test-cities", help="comma-separated (default: see the description)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per encoder")
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
    prepare: Normalizer = as_reflectance,
) -> dict[str, Any]:
    """Train a Siamese head on each encoder of ``encoders``, test it on ``test_cities``.

    Both dates of every city are prepared by ``prepare`` (the encoders' training inputs).
    """
    overlap = sorted(set(train_cities) & set(test_cities))
    if overlap or not train_cities or not test_cities:
        raise OSCDError(
            f"fine-tuning needs disjoint, non-empty train and test cities; got train "
            f"{list(train_cities)}, test {list(test_cities)}"
        )
    device = torch.device(args.device)

    def load(name: str) -> OSCDCity:
        city = dataset.load(name, bands, require_label=True)
        return dataclasses.replace(
            city, image_1=prepare(city.image_1), image_2=prepare(city.image_2)
        )

    train_set = [load(c) for c in train_cities]
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
            city = load(city_name)
            counts = confusion_counts(
                net.predict(city, device) >= threshold, city.label, city.valid
            )
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
    """Fine-tune on the checkpoint's encoder and on a randomly initialised one; the metrics
    written to ``--out``."""
    task = setup(args)
    train_cities, test_cities = default_split(task.dataset, task.cities)
    train_cities = names(args.train_cities) or train_cities
    test_cities = names(args.test_cities) or test_cities
    log(f"oscd-finetune: checkpoint {args.checkpoint}, train {train_cities}, test {test_cities}")
    torch.manual_seed(int(task.config.get("seed", 0)))
    random_init = build_model(task.config).to(torch.device(args.device))
    encoders = {"matter": task.model, "random_init": random_init}
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
            log,
            input_normalizer(task.config),
        ),
    }
    for name in encoders:
        log(summary(f"fine-tuned {name}", metrics[name]["micro"]))
    return metrics
