"""SpaceNet building segmentation with the MATTER encoder: a head on its dense features.

SpaceNet chips are 0.3-0.5 m VHR (1-band PAN or 4 / 8-band MS), not Sentinel-2. Two adaptations
let the Sentinel-2 encoder run on them unchanged otherwise:

- bands: the stem's first convolution is rebuilt for the chip's band count from the mean of
  its pretrained kernels (``adapt_input_bands``); chips are standardised per band;
- scale: each tile is average-pooled by ``--scale`` (default 4: 0.5 m -> 2 m pixels) before the
  encoder, whose full-resolution features would otherwise cost (tile px)^2 x 256 floats per
  layer; the head's logits are upsampled bilinearly back to the tile.

The head is a 3x3 convolution, ReLU, and a 1x1 convolution to one building logit per pixel,
trained with binary cross-entropy. ``--mode linear`` freezes the encoder, ``finetune`` trains it
too (the rebuilt first layer always trains: it is new).

Evaluation on the held-out tiles: pixel IoU of the building class (intersection and union
summed over tiles), and the SpaceNet building F1: the predicted mask (probability > 0.5) turned
into polygons with ``rasterio.features.shapes``, matched to the truth footprints cut to the tile
(``matter_model.datasets.spacenet.match_buildings``), TP / FP / FN summed over tiles.

Split: with several chips the last ``--test-fraction`` of them (sorted by chip id) are held out;
a single chip (the real sample here) is split by tiles instead, its last tiles in row order
held out. Scores on a handful of tiles say that the code runs, not how good the encoder is.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from matter_model.datasets.spacenet import (
    SpaceNetTiles,
    default_label_dir,
    find_chips,
    mask_to_polygons,
    match_buildings,
    pixel_iou,
)
from matter_model.downstream.encoder import (
    adapt_input_bands,
    add_training_arguments,
    dense_features,
    load_encoder,
    set_mode,
    train_epochs,
)
from matter_model.matter import Matter
from matter_model.metrics import MatchCounts

logger = logging.getLogger(__name__)


class SegmentationHead(nn.Module):
    """Building logits (B, t, t) of tiles (B, C, t, t): pooled input, encoder, head, upsampling."""

    def __init__(self, encoder: Matter, window: int, scale: int, hidden: int = 64) -> None:
        super().__init__()
        self.encoder, self.window, self.scale = encoder, window, scale
        self.head = nn.Sequential(
            nn.Conv2d(encoder.embed_dim, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        small = F.avg_pool2d(x, self.scale, ceil_mode=True) if self.scale > 1 else x
        logits = self.head(dense_features(self.encoder, small, self.window))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[:, 0]


def split_tiles(dataset: SpaceNetTiles, test_fraction: float) -> tuple[list[int], list[int]]:
    """Train and test tile indices: held-out chips, or held-out tiles of a single chip."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    if len(dataset.chips) > 1:
        order = sorted(range(len(dataset.chips)), key=lambda i: dataset.chips[i].chip_id)
        held = set(order[-math.ceil(len(order) * test_fraction) :])
        test = [i for i, (chip, _, _) in enumerate(dataset.tiles) if chip in held]
    else:
        test = list(range(len(dataset)))[-math.ceil(len(dataset) * test_fraction) :]
    held_out = set(test)
    train = [i for i in range(len(dataset)) if i not in held_out]
    if not train:
        raise ValueError(
            f"{len(dataset)} tiles leave none to train on: use a smaller --tile or more chips"
        )
    return train, test


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """SpaceNet options (``--root``: an AOI folder; ``--images`` / ``--labels`` override it)."""
    add_training_arguments(parser, epochs=20, batch_size=8, lr=1e-3)
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="chip folder or single chip, relative to --root (default: PAN)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="GeoJSON folder or file, relative to --root (default: geojson/buildings)",
    )
    parser.add_argument(
        "--tile", type=int, default=None, help="tile size in px (default: whole chips)"
    )
    parser.add_argument("--scale", type=int, default=4, help="input pooling before the encoder")
    parser.add_argument("--test-fraction", type=float, default=0.25)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train the head (and the encoder with ``finetune``), score held-out tiles: the metrics."""
    device = torch.device(args.device)
    dataset = _tiles(args)
    train_idx, test_idx = split_tiles(dataset, args.test_fraction)

    model, config, source = load_encoder(args.checkpoint, device, args.seed, args.untrained)
    pretrained_bands = list(model.bands)
    chip_bands = tuple(f"band{i + 1}" for i in range(dataset.band_count))
    window = args.window or int(config.get("subpatch", 7))
    set_mode(model, args.mode)
    adapt_input_bands(model, chip_bands)
    torch.manual_seed(args.seed)
    segmenter = SegmentationHead(model, window, args.scale).to(device)
    logger.info(
        "spacenet: %s (%d bands -> %d), mode %s, %d chips, %d train / %d test tiles",
        source,
        len(pretrained_bands),
        len(chip_bands),
        args.mode,
        len(dataset.chips),
        len(train_idx),
        len(test_idx),
    )
    loaders = {"batch_size": args.batch_size, "num_workers": args.workers}
    losses, seen, train_seconds = _train(segmenter, dataset, train_idx, args, loaders, device)
    start = time.perf_counter()
    pixels, counts = _score(segmenter, dataset, test_idx, loaders, device)
    test_seconds = time.perf_counter() - start
    return {
        "task": "spacenet",
        "model": source,
        "mode": args.mode,
        "pretrained_bands": pretrained_bands,
        "chip_bands": len(chip_bands),
        "window": window,
        "scale": args.scale,
        "tile": args.tile,
        "chips": len(dataset.chips),
        "train_tiles": len(train_idx),
        "test_tiles": len(test_idx),
        "epochs": args.epochs,
        "pixel_iou": pixels,
        "building": counts.as_dict(),
        "loss_per_epoch": losses,
        "seconds": {"train": train_seconds, "test": test_seconds},
        "train_tiles_per_s": seen / train_seconds if train_seconds else None,
        "test_tiles_per_s": len(test_idx) / test_seconds,
    }


def _tiles(args: argparse.Namespace) -> SpaceNetTiles:
    """The tiles of the chips under ``--root`` (``--images``, ``--labels``, ``--tile``)."""
    root = Path(args.root)
    images = root / (args.images or "PAN")
    labels = root / args.labels if args.labels else default_label_dir(root)
    return SpaceNetTiles(find_chips(images, labels), args.tile)


def _train(
    segmenter: SegmentationHead,
    dataset: SpaceNetTiles,
    train_idx: list[int],
    args: argparse.Namespace,
    loaders: dict[str, Any],
    device: torch.device,
) -> tuple[list[float], int, float]:
    """Train on the tiles ``train_idx``: ``train_epochs``'s losses, tiles seen and seconds."""

    def batches():
        return DataLoader(Subset(dataset, train_idx), shuffle=True, **loaders)

    def step_loss(batch: list[torch.Tensor]) -> torch.Tensor:
        x, mask = batch[0].to(device), batch[1].to(device)
        return F.binary_cross_entropy_with_logits(segmenter(x), mask)

    segmenter.head.train()
    return train_epochs(segmenter.parameters(), batches, step_loss, args.epochs, args.lr)


def _score(
    segmenter: SegmentationHead,
    dataset: SpaceNetTiles,
    test_idx: list[int],
    loaders: dict[str, Any],
    device: torch.device,
) -> tuple[float | None, MatchCounts]:
    """The pixel IoU of the building class (None without any building pixel) and the building
    match counts, summed over the tiles ``test_idx``."""
    segmenter.eval()
    counts, intersection, union = MatchCounts(), 0, 0
    with torch.no_grad():
        for x, mask, index in DataLoader(Subset(dataset, test_idx), **loaders):
            predicted = (torch.sigmoid(segmenter(x.to(device))) > 0.5).cpu().numpy()
            tiles = zip(predicted, mask.numpy(), index.tolist(), strict=True)
            for tile_mask, truth_mask, i in tiles:
                inter, uni = pixel_iou(tile_mask, truth_mask > 0)
                intersection, union = intersection + inter, union + uni
                counts += match_buildings(dataset.truth_polygons(i), mask_to_polygons(tile_mask))
    return (intersection / union if union else None), counts
