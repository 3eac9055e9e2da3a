"""Change detection methods side by side: every method on every pair, the figures per pair and
over all pairs, and the comparison of a MATTER model with its untrained twin and CVA.

Precision, recall and F1 are those of the CHANGE class, kept as :mod:`matter_model.metrics`
counts so that per-pair figures and the micro figures (counts summed over every valid pixel of
every pair, as the authors report them) come from the same code. The method itself (features,
distance, smoothing, Otsu) is :mod:`matter_model.change_detection`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from matter_model.change_detection import (
    CHANGE_MAP_OUTPUT,
    DEFAULT_BINS,
    DEFAULT_SIGMA,
    ChangePair,
    ChangeResult,
    FeatureExtractor,
    cva_features,
    detect_changes,
    model_features,
)
from matter_model.inputs import input_preparation
from matter_model.metrics import ConfusionCounts
from matter_model.rendering import render_change_map


def evaluate_pairs(
    pairs: Iterable[ChangePair],
    methods: dict[str, FeatureExtractor],
    sigma: float = DEFAULT_SIGMA,
    bins: int = DEFAULT_BINS,
    on_result: Callable[[str, ChangePair, ChangeResult], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every method on every pair (one pass over ``pairs``, so they may stream).

    Returns ``{method: {"per_pair": {name: {precision, recall, f1, threshold, tp, fp, fn, tn,
    auc, average_precision}}, "micro": {precision, recall, f1, tp, fp, fn, tn}, "macro": {auc,
    average_precision}}}``; micro figures come from the counts summed over all pairs, macro
    figures are the means over the pairs whose truth has both classes.
    ``on_result(method, pair, result)`` sees each result (e.g. to render a preview) before it
    is dropped.
    """
    per_pair: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in methods}
    totals = {m: ConfusionCounts() for m in methods}
    for pair in pairs:
        for method, extractor in methods.items():
            if pair.name in per_pair[method]:
                raise ValueError(f"pair name {pair.name!r} occurs twice")
            result = detect_changes(pair, extractor, sigma=sigma, bins=bins)
            per_pair[method][pair.name] = {
                **result.counts.as_dict(),
                "threshold": result.threshold,
                **result.ranking,
            }
            totals[method] = totals[method] + result.counts
            if on_result is not None:
                on_result(method, pair, result)
    return {
        m: {"per_pair": per_pair[m], "micro": totals[m].as_dict(), "macro": _macro(per_pair[m])}
        for m in methods
    }


def _macro(per_pair: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Means of the ranking figures over the pairs that have them (None when none has)."""
    out: dict[str, float | None] = {}
    for key in ("auc", "average_precision"):
        values = [r[key] for r in per_pair.values() if r[key] is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def untrained_twin(model: Any, config: dict[str, Any]) -> Any:
    """The network ``config`` builds, from random initialisation seeded by ``config['seed']``,
    on ``model``'s device and in eval mode: the ``untrained`` baseline of every comparison."""
    import torch

    from matter_model.checkpoint import build_model

    device = next(model.parameters()).device
    torch.manual_seed(int(config.get("seed", 0)))
    return build_model(config).to(device).eval()


def compare_with_baselines(
    model: Any,
    config: dict[str, Any],
    datasets: dict[str, Iterable[ChangePair]],
    window: int = 13,
    sigma: float = DEFAULT_SIGMA,
    previews: str | Path | None = None,
    output: str = CHANGE_MAP_OUTPUT,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every dataset's pairs through a trained MATTER model, the same network untrained (seeded
    from ``config['seed']``), and CVA, side by side: ``{dataset: evaluate_pairs(...)}``.

    Both networks see the images prepared as the model's training patches were
    (``config['normalisation']``, see :mod:`matter_model.inputs`) and give the same ``output``.
    With ``previews``, the trained model's change map of each pair is written there as PNG.
    Both networks run on the trained model's device.
    """
    device = next(model.parameters()).device
    untrained = untrained_twin(model, config)
    prepare = input_preparation(config)
    methods = {
        name: model_features(
            network, window=window, device=str(device), prepare=prepare, output=output
        )
        for name, network in (("matter", model), ("untrained", untrained))
    }
    methods["cva"] = cva_features
    bands = list(config["bands"])
    rgb = tuple(bands.index(b) if b in bands else i for i, b in enumerate(("B04", "B03", "B02")))

    def keep_preview(method: str, pair: ChangePair, result: ChangeResult) -> None:
        if previews is not None and method == "matter":
            render_change_map(pair, result.prediction, Path(previews) / f"{pair.name}.png", rgb=rgb)

    return {
        name: evaluate_pairs(pairs, methods, sigma=sigma, on_result=keep_preview)
        for name, pairs in datasets.items()
    }
