"""A patch store of real Sentinel-2 imagery: the unlabelled OSCD test-city pairs.

Each OSCD city is one two-date scene on ``imgs_1``'s 10 m grid (see
:mod:`matter_model.datasets.oscd`). It goes through the same change screen and triplet tiling as
the co-registered STAC stacks: windows that stayed unchanged between the two dates become
anchor / positive pairs, and an unchanged window of the next city in the list the negative
(``negatives="other-city"``, the default: another city is surely another place and often another
landscape; ``"same-city"`` draws it from the anchor's own city, at least
``min_negative_distance_px`` away). One shard per city (``oscd-<city>``), so a rerun replaces
each city whole.

The screen is set for purity, not quantity: a positive that holds real change teaches the model
to ignore the very changes OSCD labels. ``DEFAULT_THRESHOLD`` is the point of the change screen's
curve (``benchmarks/results/change_screen.json``, measured on the labelled cities, which are not
pretrained on) where about 94 % of kept windows are truly unchanged, against about 85 % at the
former 1.2; the perturbations of :mod:`matter_model.augment` give the positives back the
radiometric and geometric differences that a tight screen removes.

Only cities without a change label are used by default (``test.txt``): the labelled ones are the
evaluation set and must not be seen in pretraining. The imagery is L1C top-of-atmosphere
reflectance (DN / 10000), whose gain and offset per band differ between dates with the sun,
the atmosphere and the season. Each date's bands are therefore robustly standardised over the
whole city before tiling (``scene-standardised`` values, see :mod:`matter_model.inputs`): the
positives then differ by local change only, as they do for the change-vector baseline, and the
checkpoint records it so that evaluation prepares the OSCD cities the same way. Such a store
must not be mixed with one of reflectance patches (``write_shard`` refuses it).

``python -m pipelines.oscd_patches --root ../shared/data/oscd --out .demo/oscd/patches``
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from matter_model.bands import MATTER_BANDS
from matter_model.datasets.oscd import OSCD, OSCDCity, OSCDError
from matter_model.inputs import SCENE_STANDARDISED, standardise
from matter_model.logs import configure_cli_logging
from pipelines.change_screen import screen_windows
from pipelines.tiling import NegativePool, StackSource, TilingSettings, tile_to_store

# Named, not __name__: under `python -m pipelines.oscd_patches` that is "__main__".
logger = logging.getLogger("pipelines.oscd_patches")

# Dates missing from a city's dates.txt get these placeholders (the tiling needs two labels).
_PLACEHOLDER_DATES = ("2000-01-01", "2000-01-02")
DEFAULT_THRESHOLD = 0.75
NEGATIVES = ("other-city", "same-city")


def city_stack(city: OSCDCity) -> xr.Dataset:
    """One OSCD city as a two-date stack in the layout the change screen and tiling read, each
    date's bands scene-standardised (the ``reflectance`` variable keeps its name: the layout's)."""
    dates = [str(d) for d in city.dates] if city.dates else list(_PLACEHOLDER_DATES)
    if city.crs.to_epsg() is None:
        raise OSCDError(f"city {city.name!r}: CRS {city.crs} has no EPSG code")
    valid = np.broadcast_to(city.valid, (2, *city.valid.shape)).copy()
    dates_stack = np.stack([standardise(city.image_1), standardise(city.image_2)])
    return xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), dates_stack),
            "valid": (("time", "y", "x"), valid),
        },
        coords={"time": np.array(dates, dtype="datetime64[ns]"), "band": list(city.bands)},
        attrs={
            "crs": f"EPSG:{city.crs.to_epsg()}",
            "transform": list(city.transform)[:6],
            "region": f"oscd-{city.name}",
            "tiles": "",
        },
    )


def build_oscd_patch_store(
    root: str | Path,
    out: str | Path,
    cities: Sequence[str] | None = None,
    bands: Sequence[str] = MATTER_BANDS,
    window: int = 32,
    threshold: float = DEFAULT_THRESHOLD,
    min_valid_fraction: float = 0.9,
    min_negative_distance_px: int = 64,
    seed: int = 0,
    negatives: str = "other-city",
) -> dict[str, int]:
    """Screen and tile ``cities`` (default: the unlabelled ones) into the store at ``out``;
    return the triplets written per city. With one city only, negatives come from that city."""
    if negatives not in NEGATIVES:
        raise ValueError(f"unknown negatives {negatives!r}; choose one of {list(NEGATIVES)}")
    dataset = OSCD(root)
    labelled = set(dataset.labelled_cities())
    if cities is None:
        cities = [c for c in dataset.cities("all") if c not in labelled]
    if not cities:
        raise OSCDError(f"no unlabelled OSCD city under {root} to pretrain on")
    scenes = _screened(dataset, cities, bands, window, threshold, min_valid_fraction)
    settings = TilingSettings(
        seed=seed,
        min_valid_fraction=min_valid_fraction,
        min_negative_distance_px=min_negative_distance_px,
    )
    written: dict[str, int] = {}
    for k, name in enumerate(cities):
        source, screen = scenes[name]
        other = _next_with_windows(cities, k, scenes) if negatives == "other-city" else None
        pool = NegativePool(*scenes[other]) if other is not None else None
        written[name] = tile_to_store(
            source,
            screen,
            out,
            f"oscd-{name}",
            bands,
            settings,
            negative_pool=pool,
            normalisation=SCENE_STANDARDISED,
        ).triplets
        unchanged = int(screen["unchanged"].sum())
        negative_from = other or name
        logger.info(
            "%s: %d/%d windows unchanged, %d triplets (negatives from %s)",
            name,
            unchanged,
            len(screen),
            written[name],
            negative_from,
        )
    return written


def _screened(
    dataset: OSCD,
    cities: Sequence[str],
    bands: Sequence[str],
    window: int,
    threshold: float,
    min_valid_fraction: float,
) -> dict[str, tuple[StackSource, pd.DataFrame]]:
    """Each city's stack as a tiling source, with its change screen of ``window`` px windows."""
    scenes: dict[str, tuple[StackSource, pd.DataFrame]] = {}
    for name in cities:
        stack = city_stack(dataset.load(name, bands))
        scenes[name] = (
            StackSource(stack, bands),
            screen_windows(stack, window, threshold, min_valid_fraction),
        )
    return scenes


def _next_with_windows(
    cities: Sequence[str], k: int, scenes: dict[str, tuple[StackSource, pd.DataFrame]]
) -> str | None:
    """The first city after ``cities[k]`` (cyclically) with an unchanged window, None if none."""
    for step in range(1, len(cities)):
        other = cities[(k + step) % len(cities)]
        if scenes[other][1]["unchanged"].any():
            return other
    return None


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.oscd_patches", description=__doc__)
    parser.add_argument("--root", required=True, help="folder holding the OSCD '... - Images'")
    parser.add_argument("--out", required=True, help="patch store root to write")
    parser.add_argument("--cities", help="comma-separated; default: every unlabelled city")
    parser.add_argument("--window", type=int, default=32, help="crop size in px")
    parser.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="change-screen threshold"
    )
    parser.add_argument(
        "--negatives", choices=NEGATIVES, default="other-city", help="where negatives come from"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cities = [c.strip() for c in args.cities.split(",") if c.strip()] if args.cities else None
    configure_cli_logging()
    try:
        written = build_oscd_patch_store(
            args.root,
            args.out,
            cities,
            window=args.window,
            threshold=args.threshold,
            seed=args.seed,
            negatives=args.negatives,
        )
    except (OSCDError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    print(f"{sum(written.values())} triplets from {len(written)} cities in {args.out}")


if __name__ == "__main__":
    main()
