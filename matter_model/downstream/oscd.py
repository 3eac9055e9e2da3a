"""OSCD unsupervised change detection: MATTER, the same network untrained, and CVA, side by side.

As the MATTER authors evaluated it (:mod:`matter_model.change_detection`): the
features of the ``--window`` px window around every pixel at both dates, their L2 distance,
Gaussian smoothing, an Otsu threshold per city; precision / recall / F1 of the change class per
city and micro over every valid pixel of every city, for the checkpoint's network (``matter``),
the same network from random initialisation (``untrained``) and change vector analysis
(``cva``), side by side in one run.

Fine-tuned change detection is the ``oscd-finetune`` task (:mod:`.oscd_finetune`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from matter_model.change_detection import (
    CHANGE_MAP_OUTPUT,
    DEFAULT_SIGMA,
    MODEL_OUTPUTS,
    compare_with_baselines,
)
from matter_model.checkpoint import load_model
from matter_model.datasets.oscd import OSCD, OSCDError
from matter_model.matter import Matter

DEFAULT_WINDOW = 13  # the authors' feature window for change maps
METHODS = ("matter", "untrained", "cva")


def names(text: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of every OSCD task: the release, the cities, the bands, the feature window."""
    parser.add_argument("--root", type=Path, required=True, help="folder of the OSCD release")
    parser.add_argument("--cities", help="comma-separated (default: every labelled city)")
    parser.add_argument("--bands", help="comma-separated band subset (default: the checkpoint's)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="feature window, px")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """OSCD's options (the shared --checkpoint, --out and --device come from the CLI)."""
    add_dataset_arguments(parser)
    parser.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="Gaussian sigma, px")
    parser.add_argument(
        "--features",
        choices=sorted(MODEL_OUTPUTS),
        default=CHANGE_MAP_OUTPUT,
        help="what both networks give the change map: the window's un-normalised surface "
        "residuals or the unit-length embedding",
    )
    parser.add_argument("--maps", type=Path, help="folder for MATTER's change-map PNGs")


@dataclass(frozen=True)
class Setup:
    """What an OSCD task works on: the release, the checkpoint's model, its bands, the cities."""

    dataset: OSCD
    model: Matter
    config: dict[str, Any]
    bands: tuple[str, ...]
    cities: list[str]


def setup(args: argparse.Namespace) -> Setup:
    """Open the release and the checkpoint; check the bands and that every city is labelled."""
    dataset = OSCD(args.root)
    model, config = load_model(args.checkpoint, map_location=torch.device(args.device))
    bands = check_bands(args.checkpoint, config["bands"], names(args.bands))
    labelled = dataset.labelled_cities()
    cities = names(args.cities) or labelled
    unlabelled = [c for c in cities if c not in labelled]
    if unlabelled:
        raise OSCDError(
            f"cities {unlabelled} have no change label under {args.root}; labelled: {labelled}"
        )
    if not cities:
        raise OSCDError(f"no labelled city under {args.root}")
    return Setup(dataset, model, config, bands, cities)


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


def summary(name: str, micro: dict[str, Any], macro: dict[str, Any] | None = None) -> str:
    """One line of micro precision, recall and F1 (and the mean ranking figures, if given)."""
    line = f"  {name:22s} P {micro['precision']:.4f} R {micro['recall']:.4f} F1 {micro['f1']:.4f}"
    if macro and macro["auc"] is not None:
        line += f" | AUC {macro['auc']:.4f} AP {macro['average_precision']:.4f}"
    return line


def _per_city(results: dict[str, Any]) -> dict[str, Any]:
    return {"per_city": results["per_pair"], "micro": results["micro"], "macro": results["macro"]}


def unsupervised(
    model: Matter,
    config: dict[str, Any],
    dataset: OSCD,
    cities: Sequence[str],
    window: int = DEFAULT_WINDOW,
    sigma: float = DEFAULT_SIGMA,
    maps: Path | None = None,
    output: str = CHANGE_MAP_OUTPUT,
) -> dict[str, dict[str, Any]]:
    """``{method: {"per_city": {city: scores + threshold + ranking}, "micro": scores, "macro":
    mean ranking}}`` for METHODS.

    Cities stream one at a time; with ``maps`` MATTER's change map of each city (dates, truth,
    prediction) is written there as ``<city>.png``.
    """
    pairs = dataset.iter_pairs(cities, bands=config["bands"])
    results = compare_with_baselines(
        model, config, {"oscd": pairs}, window=window, sigma=sigma, previews=maps, output=output
    )["oscd"]
    return {method: _per_city(results[method]) for method in METHODS}


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Unsupervised change detection on the chosen cities; the metrics written to ``--out``."""
    task = setup(args)
    log(f"oscd: checkpoint {args.checkpoint}, bands {list(task.bands)}, cities {task.cities}")
    metrics: dict[str, Any] = {
        "task": "oscd",
        "checkpoint": str(args.checkpoint),
        "root": str(args.root),
        "bands": list(task.bands),
        "window": args.window,
        "sigma": args.sigma,
        "features": args.features,
        "cities": task.cities,
        **unsupervised(
            task.model,
            task.config,
            task.dataset,
            task.cities,
            args.window,
            args.sigma,
            args.maps,
            args.features,
        ),
    }
    for method in METHODS:
        log(summary(method, metrics[method]["micro"], metrics[method]["macro"]))
    return metrics
