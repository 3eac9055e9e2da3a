"""The MATTER encoder for downstream tasks: loading, freezing, band adaptation, the training loop.

Shared by the BigEarthNet and SpaceNet tasks so that both load a checkpoint (or build the same
network from random initialisation), expose the same dense features and train the same way.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from matter_model.checkpoint import build_model, load_checkpoint, load_model, model_config
from matter_model.matter import Matter
from matter_model.train import load_config

logger = logging.getLogger(__name__)

MODES = ("linear", "finetune")


def load_encoder(
    checkpoint: Path | None, device: str | torch.device, seed: int = 0, untrained: bool = False
) -> tuple[Matter, dict[str, Any], str]:
    """The trained model of ``checkpoint``, its config, and a line saying which it is.

    Without a checkpoint: the default config's network, randomly initialised from ``seed``.
    With ``untrained``: the checkpoint's network randomly initialised, the baseline that shows
    what its pretraining adds.
    """
    if checkpoint is not None and not untrained:
        model, config = load_model(checkpoint, map_location=device)
        return model, config, f"checkpoint {checkpoint}"
    config = load_config() if checkpoint is None else model_config(load_checkpoint(checkpoint))
    torch.manual_seed(seed)
    what = "the default config" if checkpoint is None else f"checkpoint {checkpoint}'s config"
    return build_model(config).to(device), config, f"random initialisation of {what}"


def dense_features(model: Matter, x: torch.Tensor, window: int) -> torch.Tensor:
    """Per-pixel MATTER embeddings (B, E, H, W): the residual encoding of the ``window`` px
    window around each pixel, the representation the pretraining loss shapes."""
    return model.embed(x, window)


def set_mode(model: Matter, mode: str) -> None:
    """``linear``: freeze the encoder (eval mode, no gradients: its batch statistics stay the
    pretrained ones); ``finetune``: train all of it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    frozen = mode == "linear"
    model.train(not frozen)
    for parameter in model.parameters():
        parameter.requires_grad_(not frozen)


def adapt_input_bands(model: Matter, bands: tuple[str, ...]) -> None:
    """Give the model first convolutions for ``bands`` (a chip's count, e.g. 1 PAN or 4 MS).

    Each convolution that reads the raw bands (the stem, and the input concatenation of the
    authors' variant) gets, for each new band, the mean of its pretrained kernels over the old
    bands, scaled by old / new band count: an image whose bands are all equal then gives the
    same response as before, so the pretrained layers after it see inputs of the scale they were
    trained on. The rest of the network is unchanged. A model already taking ``len(bands)``
    bands only has its band names replaced.
    """
    if model.in_channels != len(bands):
        model.stem[0] = _widened(model.stem[0], 0, len(bands))
        if model.fuse is not None:
            model.fuse.conv = _widened(
                model.fuse.conv, model.fuse.conv.in_channels - model.in_channels, len(bands)
            )
    model.bands = tuple(bands)
    model.in_channels = len(bands)


def _widened(conv: nn.Conv2d, kept: int, bands: int) -> nn.Conv2d:
    """``conv`` whose input channels after the first ``kept`` (the raw bands) become ``bands``
    channels, each the old band kernels' mean scaled by old / new count; the first ``kept``
    input channels keep their kernels."""
    old = conv.in_channels - kept
    weight = conv.weight.detach()
    band_kernel = weight[:, kept:].mean(dim=1, keepdim=True) * (old / bands)
    new = nn.Conv2d(
        kept + bands,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    ).to(weight.device)
    with torch.no_grad():
        new.weight.copy_(torch.cat([weight[:, :kept], band_kernel.expand(-1, bands, -1, -1)], 1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def train_epochs(
    parameters: Iterable[nn.Parameter],
    batches: Callable[[], Iterable[Any]],
    step_loss: Callable[[Any], torch.Tensor],
    epochs: int,
    lr: float,
) -> tuple[list[float], int, float]:
    """Adam over ``epochs`` passes of ``batches()``; ``step_loss(batch)`` returns the loss.

    Returns the mean loss of each epoch, the number of samples seen (the first dimension of
    each batch's first element) and the seconds spent.
    """
    optimizer = torch.optim.Adam([p for p in parameters if p.requires_grad], lr=lr)
    losses, seen, start = [], 0, time.perf_counter()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in batches():
            loss = step_loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}: the loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            size = len(batch[0])
            total, count, seen = total + loss.item() * size, count + size, seen + size
        losses.append(total / max(count, 1))
        logger.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, losses[-1])
    return losses, seen, time.perf_counter() - start


def add_training_arguments(
    parser: argparse.ArgumentParser, epochs: int, batch_size: int, lr: float
) -> None:
    """Options every downstream task shares: mode, epochs, batch size, lr, workers, seed."""
    parser.add_argument("--root", type=Path, required=True, help="the dataset's folder")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="linear",
        help="linear: frozen encoder, train the head; finetune: train the whole network",
    )
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="the checkpoint's network with random weights: the baseline for its pretraining",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="residual-encoder window in px (odd; default: the checkpoint's sub-patch size)",
    )
