"""OSCD unsupervised change detection: MATTER, the same network untrained, and CVA, side by side.

``--protocol city`` (the default, :mod:`matter_model.change_detection`): the features of the
``--window`` px window around every pixel of each whole city at both dates, their L2 distance,
Gaussian smoothing, an Otsu threshold per city; precision / recall / F1 of the change class per
city and micro over every valid pixel of every city, for the checkpoint's network (``matter``),
the same network from random initialisation (``untrained``) and change vector analysis
(``cva``), side by side in one run.

``--protocol authors`` (:mod:`matter_model.tiled_protocol`): the authors' released evaluation
instead, for the same three methods: 32 px tiles (``--tiles change``, their loader's choice, or
``all``), each standardised on its own and run alone, the distance blurred by a 13 x 13
Gaussian (sigma 2.3), Otsu per batch of 32 tiles with the last incomplete batch dropped.

Fine-tuned change detection is the ``oscd-finetune`` task (:mod:`.oscd_finetune`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from matter_model.change_detection import (
    CHANGE_MAP_OUTPUT,
    DEFAULT_SIGMA,
    MODEL_OUTPUTS,
    model_features,
)
from matter_model.change_evaluation import compare_with_baselines, untrained_twin
from matter_model.checkpoint import load_model
from matter_model.datasets.oscd import OSCD, OSCDError
from matter_model.matter import Matter
from matter_model.tiled_protocol import (
    DEFAULT_EDGE,
    DEFAULT_TILES,
    EDGE_CHOICES,
    OTSU_BATCH,
    TILE,
    TILE_CHOICES,
    TiledProtocol,
    evaluate_tiled,
    tile_bands,
)

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 13  # the authors' feature window for change maps
METHODS = ("matter", "untrained", "cva")
PROTOCOLS = ("city", "authors")
# Options of one protocol only: (dest, flag); given with the other protocol they are an error.
CITY_ONLY = (("sigma", "--sigma"), ("maps", "--maps"))
AUTHORS_ONLY = (
    ("tiles", "--tiles"),
    ("tile_size", "--tile-size"),
    ("otsu_batch", "--otsu-batch"),
    ("edge_tiles", "--edge-tiles"),
)


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
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="city",
        help="city: whole cities, Otsu per city (default); authors: the authors' released "
        "evaluation, 32 px tiles standardised on their own, Otsu per batch of 32 tiles",
    )
    parser.add_argument(
        "--sigma", type=float, help=f"city: Gaussian sigma, px (default {DEFAULT_SIGMA})"
    )
    parser.add_argument(
        "--tiles",
        choices=TILE_CHOICES,
        help=f"authors: score every tile or only those holding a change pixel "
        f"(default {DEFAULT_TILES}, as the authors' test loader)",
    )
    parser.add_argument("--tile-size", type=int, help=f"authors: tile side, px (default {TILE})")
    parser.add_argument(
        "--otsu-batch", type=int, help=f"authors: tiles per Otsu threshold (default {OTSU_BATCH})"
    )
    parser.add_argument(
        "--edge-tiles",
        choices=EDGE_CHOICES,
        help=f"authors: where a row or column of tiles falls short of the edge, add one tile "
        f"aligned to the edge (shift) or leave the strip out (drop) (default {DEFAULT_EDGE})",
    )
    parser.add_argument(
        "--features",
        choices=sorted(MODEL_OUTPUTS),
        default=CHANGE_MAP_OUTPUT,
        help="what both networks give the change map: the window's un-normalised surface "
        "residuals or the unit-length embedding",
    )
    parser.add_argument("--maps", type=Path, help="city: folder for MATTER's change-map PNGs")


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


def unsupervised_authors(
    model: Matter,
    config: dict[str, Any],
    dataset: OSCD,
    cities: Sequence[str],
    protocol: TiledProtocol,
    window: int = DEFAULT_WINDOW,
    output: str = CHANGE_MAP_OUTPUT,
) -> dict[str, dict[str, Any]]:
    """METHODS under the authors' protocol: ``{method: {"per_city": {city: scores + pixels +
    tiles + ranking}, "micro": scores + pixels + tiles + batches, "macro": mean ranking,
    "thresholds": one per Otsu batch, "tiles_dropped_last_batch", "tile_counts"}}``.

    Every method sees the per-tile standardised tiles in place of the checkpoint's own
    preparation (``config['normalisation']``): both networks run on them, CVA compares them.
    """
    device = str(next(model.parameters()).device)
    networks = {"matter": model, "untrained": untrained_twin(model, config)}
    methods = {
        name: model_features(network, window=window, device=device, output=output)
        for name, network in networks.items()
    }
    methods["cva"] = tile_bands
    pairs = dataset.iter_pairs(cities, bands=config["bands"])
    results = evaluate_tiled(pairs, methods, protocol)
    return {
        method: {"per_city": results[method]["per_pair"]}
        | {k: v for k, v in results[method].items() if k != "per_pair"}
        for method in METHODS
    }


def protocol_of(args: argparse.Namespace) -> TiledProtocol | None:
    """The authors' protocol that the options ask for, or None for the city protocol; an
    option of the other protocol is an error rather than silently ignored."""
    other = CITY_ONLY if args.protocol == "authors" else AUTHORS_ONLY
    given = [flag for dest, flag in other if getattr(args, dest) is not None]
    if given:
        raise OSCDError(f"{', '.join(given)}: not an option of --protocol {args.protocol}")
    if args.protocol == "city":
        return None
    return TiledProtocol(
        tile=TILE if args.tile_size is None else args.tile_size,
        tiles=args.tiles or DEFAULT_TILES,
        edge=args.edge_tiles or DEFAULT_EDGE,
        otsu_batch=OTSU_BATCH if args.otsu_batch is None else args.otsu_batch,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Unsupervised change detection on the chosen cities; the metrics written to ``--out``."""
    protocol = protocol_of(args)
    task = setup(args)
    logger.info(
        "oscd --protocol %s: checkpoint %s, bands %s, cities %s",
        args.protocol,
        args.checkpoint,
        list(task.bands),
        task.cities,
    )
    metrics: dict[str, Any] = {
        "task": "oscd",
        "checkpoint": str(args.checkpoint),
        "root": str(args.root),
        "bands": list(task.bands),
        "protocol": args.protocol,
        "window": args.window,
        "features": args.features,
        "cities": task.cities,
    }
    if protocol is None:
        sigma = DEFAULT_SIGMA if args.sigma is None else args.sigma
        metrics["sigma"] = sigma
        metrics |= unsupervised(
            task.model,
            task.config,
            task.dataset,
            task.cities,
            args.window,
            sigma,
            args.maps,
            args.features,
        )
        scope = "Otsu per city"
    else:
        metrics["protocol_settings"] = protocol.settings()
        metrics |= unsupervised_authors(
            task.model,
            task.config,
            task.dataset,
            task.cities,
            protocol,
            args.window,
            args.features,
        )
        micro = metrics["cva"]["micro"]
        scope = (
            f"{protocol.tiles} tiles of {protocol.tile} px, Otsu per {protocol.otsu_batch} "
            f"tiles: {micro['tiles']} tiles, {micro['pixels']} px scored"
        )
    logger.info("oscd, protocol %s (%s); micro over the cities:", args.protocol, scope)
    for method in METHODS:
        logger.info("%s", summary(method, metrics[method]["micro"], metrics[method]["macro"]))
    return metrics
