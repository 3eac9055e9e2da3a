"""BigEarthNet multi-label classification with the MATTER encoder: linear probe and fine-tuning.

The classifier is one linear layer on the encoder's pooled features: the per-pixel residual
embeddings (``dense_features``) averaged over the 120 x 120 patch. ``--mode linear`` freezes the
encoder (a linear probe); ``--mode finetune`` trains it with the layer. Trained on one official
split (``--train-split``, default ``train``) and scored on another (``--test-split``, default
``test``) by micro and macro mean average precision, as BigEarthNet results are reported:

- AP of one class: the area under its precision-recall curve as a step function,
  ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, high to low (ties share a
  threshold; this is scikit-learn's ``average_precision_score``);
- macro mAP: the mean AP over classes with at least one positive test patch (AP is undefined
  without one; the classes used are listed);
- micro mAP: the AP of all (patch, class) scores ranked together.

The readers stream patches from disk through a DataLoader; nothing scales with the dataset but
the test scores kept for AP (patches x classes floats).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from matter_model.checkpoint import CheckpointError
from matter_model.datasets.bigearthnet import BIGEARTHNET_BANDS, BigEarthNet
from matter_model.downstream.encoder import (
    add_training_arguments,
    dense_features,
    load_encoder,
    set_mode,
    train_epochs,
)
from matter_model.inputs import input_preparation
from matter_model.matter import Matter
from matter_model.metrics import average_precision

logger = logging.getLogger(__name__)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Micro and macro mAP of ``scores`` / ``targets`` (patches x classes), with per-class AP
    (NaN for a class without positives); a mAP without any positive is None."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape}: need equal (N, K)")
    per_class = [average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])]
    scored = [ap for ap in per_class if not np.isnan(ap)]
    micro = average_precision(scores, targets)
    return {
        "micro_map": None if np.isnan(micro) else micro,
        "macro_map": float(np.mean(scored)) if scored else None,
        "per_class_ap": per_class,
    }


class PooledLinear(nn.Module):
    """The encoder's dense features, averaged over the patch, then one linear layer."""

    def __init__(self, encoder: Matter, classes: int, window: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.window = window
        self.head = nn.Linear(encoder.embed_dim, classes)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features (B, E): the dense embeddings averaged over the patch."""
        return dense_features(self.encoder, x, self.window).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """BigEarthNet options (``--root``: the folder of patch folders)."""
    add_training_arguments(parser, epochs=10, batch_size=32, lr=1e-3)
    parser.add_argument("--train-split", default="train", help="official split to train on")
    parser.add_argument("--test-split", default="test", help="official split to score")
    parser.add_argument(
        "--split-dir", type=Path, default=None, help="folder of the split CSVs (default: root)"
    )
    parser.add_argument("--nomenclature", type=int, choices=(19, 43), default=19)
    parser.add_argument(
        "--bands",
        default=None,
        help="comma-separated bands; must be the checkpoint's (default: the checkpoint's)",
    )


def _bands(args: argparse.Namespace, model: Matter, source: str) -> tuple[str, ...]:
    """The bands to read: the model's, checked against ``--bands`` and BigEarthNet's bands."""
    bands = tuple(model.bands)
    if args.bands:
        wanted = tuple(b.strip() for b in args.bands.split(",") if b.strip())
        if wanted != bands:
            raise CheckpointError(
                f"{source} takes {len(bands)} bands {list(bands)}, --bands asks for "
                f"{len(wanted)} {list(wanted)}: drop --bands or use a matching checkpoint"
            )
    missing = [b for b in bands if b not in BIGEARTHNET_BANDS]
    if missing:
        raise CheckpointError(
            f"{source} takes bands {list(bands)}; BigEarthNet-S2 has no {missing} "
            f"(it has {list(BIGEARTHNET_BANDS)})"
        )
    return bands


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the probe or fine-tune on ``--train-split``, score ``--test-split``: the metrics."""
    device = torch.device(args.device)
    model, config, source = load_encoder(args.checkpoint, device, args.seed, args.untrained)
    bands = _bands(args, model, source)
    window = args.window or int(config.get("subpatch", 7))
    logger.info(
        "bigearthnet: %s, bands %s, mode %s, window %d", source, list(bands), args.mode, window
    )
    train_set, test_set = _splits(args, bands, config)

    torch.manual_seed(args.seed)
    classifier = PooledLinear(model, len(train_set.classes), window).to(device)
    set_mode(model, args.mode)
    loaders = {"batch_size": args.batch_size, "num_workers": args.workers}
    batches, step_loss, encode_seconds = _training(classifier, train_set, args, loaders, device)
    losses, _, train_seconds = train_epochs(
        classifier.parameters(), batches, step_loss, args.epochs, args.lr
    )
    classifier.eval()
    start = time.perf_counter()
    test_features, test_targets = _pooled(classifier, DataLoader(test_set, **loaders))
    test_seconds = time.perf_counter() - start
    with torch.no_grad():
        scores = torch.sigmoid(classifier.head(test_features)).cpu().numpy()
    metrics = mean_average_precision(scores, test_targets.numpy())
    seconds = {"encode_train": encode_seconds, "train": train_seconds, "test": test_seconds}
    return _report(args, source, bands, window, train_set, test_set, metrics, losses, seconds)


def _splits(
    args: argparse.Namespace, bands: tuple[str, ...], config: dict[str, Any]
) -> tuple[BigEarthNet, BigEarthNet]:
    """The training and test splits, read as the checkpoint's inputs; they must not overlap."""

    def dataset(split: str) -> BigEarthNet:
        return BigEarthNet(
            args.root, split, bands, args.nomenclature, args.split_dir, input_preparation(config)
        )

    train_set, test_set = dataset(args.train_split), dataset(args.test_split)
    overlap = set(train_set.patches) & set(test_set.patches)
    if overlap:
        raise ValueError(f"{len(overlap)} patches are in both splits, e.g. {sorted(overlap)[0]}")
    logger.info(
        "%d %s patches, %d %s patches",
        len(train_set),
        args.train_split,
        len(test_set),
        args.test_split,
    )
    return train_set, test_set


def _training(
    classifier: PooledLinear,
    train_set: BigEarthNet,
    args: argparse.Namespace,
    loaders: dict[str, Any],
    device: torch.device,
) -> tuple[Callable[[], DataLoader], Callable[[list[torch.Tensor]], torch.Tensor], float]:
    """The epoch's batches and the loss of one for ``--mode``, and the seconds spent encoding
    the training patches beforehand (linear probe only)."""
    if args.mode == "linear":
        # A frozen encoder gives every patch the same features in every epoch: compute them once
        # (patches x embed_dim floats), then train the linear layer on them.
        start = time.perf_counter()
        train_features, train_targets = _pooled(classifier, DataLoader(train_set, **loaders))
        encode_seconds = time.perf_counter() - start
        features = TensorDataset(train_features, train_targets)

        def batches():
            return DataLoader(features, batch_size=args.batch_size, shuffle=True)

        def step_loss(batch: list[torch.Tensor]) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(classifier.head(batch[0]), batch[1])

    else:
        encode_seconds = 0.0

        def batches():
            return DataLoader(train_set, shuffle=True, **loaders)

        def step_loss(batch: list[torch.Tensor]) -> torch.Tensor:
            x, y = batch[0].to(device), batch[1].to(device)
            return F.binary_cross_entropy_with_logits(classifier(x), y)

    return batches, step_loss, encode_seconds


def _report(
    args: argparse.Namespace,
    source: str,
    bands: tuple[str, ...],
    window: int,
    train_set: BigEarthNet,
    test_set: BigEarthNet,
    metrics: dict[str, Any],
    losses: list[float],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The task's metrics: the settings, the mAPs with the AP of each class, losses and timing."""
    per_class = dict(zip(train_set.classes, metrics.pop("per_class_ap"), strict=True))
    return {
        "task": "bigearthnet",
        "model": source,
        "mode": args.mode,
        "bands": list(bands),
        "nomenclature": args.nomenclature,
        "window": window,
        "train_split": args.train_split,
        "test_split": args.test_split,
        "train_patches": len(train_set),
        "test_patches": len(test_set),
        "epochs": args.epochs,
        **metrics,
        "per_class_ap": {k: v for k, v in per_class.items() if not np.isnan(v)},
        "classes_without_positives": [k for k, v in per_class.items() if np.isnan(v)],
        "loss_per_epoch": losses,
        "seconds": seconds,
        "test_patches_per_s": len(test_set) / seconds["test"],
        "train_patches_per_s": (
            len(train_set) / seconds["encode_train"]
            if args.mode == "linear"
            else len(train_set) * args.epochs / seconds["train"]
        ),
    }


def _pooled(classifier: PooledLinear, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, E) and targets (N, K) of every patch the loader yields."""
    device = classifier.head.weight.device
    features, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            features.append(classifier.pooled(x.to(device)))
            targets.append(y.to(device))
    return torch.cat(features), torch.cat(targets)
