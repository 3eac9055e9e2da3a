"""Unsupervised change detection on whole scenes: this project's ``city`` protocol for OSCD.

For a pair of co-registered images of one place at two dates:

1. a feature extractor maps each image ``(C, H, W)`` to per-pixel features ``(E, H, W)``;
2. the change score of a pixel is the L2 distance between its two feature vectors;
3. the score map is smoothed by a Gaussian (``sigma`` in pixels; 0 disables it);
4. Otsu's threshold, computed over the valid pixels of that pair alone, splits it:
   change = score > threshold.

Precision, recall and F1 are those of the CHANGE class, kept as :mod:`matter_model.metrics`
counts so that per-pair figures and the micro figures (counts summed over every valid pixel of
every pair, as the authors report them) come from the same code.

The scoring differs from the authors' released evaluation, which cuts each city into 32 px
tiles, blurs with a 13 x 13 Gaussian of sigma 2.3 and runs Otsu per batch of 32 tiles
(:mod:`matter_model.tiled_protocol`): whole scenes, ``DEFAULT_SIGMA = 1.0`` and Otsu per pair
are this project's choices, and the two protocols' figures are not comparable.

Feature extractors are plain callables ``(image (C, H, W) float32) -> (E, H, W)``:
:func:`cva_features` (change vector analysis on per-image standardised bands) and
:func:`model_features` (dense surface residuals or embeddings of a MATTER model, which also
takes a batch ``(N, C, H, W) -> (N, E, H, W)``, as the authors' tiled protocol in
:mod:`matter_model.tiled_protocol` runs it).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from matter_model.atomic_io import atomic_write_bytes
from matter_model.inputs import Normalizer, as_reflectance, input_normalizer, standardize
from matter_model.metrics import ConfusionCounts, confusion_counts, ranking_quality
from matter_model.rendering import contrast_stretch

FeatureExtractor = Callable[[np.ndarray], np.ndarray]

DEFAULT_SIGMA = 1.0
DEFAULT_BINS = 256
# What a MATTER network gives a change map, by name: the method of the model that computes it.
# "residual" (the default for change maps): the window's surface residuals, un-normalised like
# the output of the authors' surface encoding; "embedding": the unit-length embedding trained by
# the InfoNCE loss, whose distances lie in [0, 2] without the long tail Otsu needs.
MODEL_OUTPUTS = {
    "residual": "surface_residuals",
    "embedding": "embed",
    "authors": "surface_encoding",  # the released encoder's output: LeakyReLU(-0.2) per codeword
}
CHANGE_MAP_OUTPUT = "residual"


@dataclass(frozen=True)
class ChangePair:
    """Two co-registered images ``(C, H, W)`` of one place, the change truth and a valid mask."""

    name: str
    image_1: np.ndarray
    image_2: np.ndarray
    truth: np.ndarray
    valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image_1.ndim != 3 or self.image_1.shape != self.image_2.shape:
            raise ValueError(
                f"pair {self.name!r}: images must be (C, H, W) of one shape, got "
                f"{self.image_1.shape} and {self.image_2.shape}"
            )
        hw = self.image_1.shape[1:]
        if self.truth.shape != hw:
            raise ValueError(f"pair {self.name!r}: truth {self.truth.shape} != images {hw}")
        if self.valid is not None and self.valid.shape != hw:
            raise ValueError(f"pair {self.name!r}: valid {self.valid.shape} != images {hw}")


@dataclass(frozen=True)
class ChangeResult:
    """One method's output on one pair: smoothed score map, threshold, prediction, counts, and
    the score's :func:`matter_model.metrics.ranking_quality` over the valid pixels."""

    distance: np.ndarray
    threshold: float
    prediction: np.ndarray
    counts: ConfusionCounts
    ranking: dict[str, float | None]


def otsu_threshold(values: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Otsu's threshold of ``values`` (finite ones), from a ``bins``-bin histogram.

    Returns the upper edge of the last bin of the lower class, so ``values > threshold`` is
    exactly the upper class of the histogram split that maximises the between-class variance.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("Otsu threshold of an empty set of values")
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    w1 = v.size - w0
    s0 = np.cumsum(counts * centres)[:-1]
    mu0 = s0 / np.maximum(w0, 1)
    mu1 = (np.sum(counts * centres) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def cva_features(image: np.ndarray) -> np.ndarray:
    """Change vector analysis: the per-image robustly standardised bands are the features.

    The L2 distance between two dates is then the CVA magnitude of the normalised bands, which
    ignores a global gain or offset of each band between dates.
    """
    return standardize(image, robust=True)


def model_features(
    model: Any,
    window: int = 13,
    device: str = "cpu",
    tile: int = 512,
    margin: int | None = None,
    normalize: Normalizer = as_reflectance,
    output: str = "embedding",
) -> FeatureExtractor:
    """A feature extractor running the model's ``output`` (a key of ``MODEL_OUTPUTS``; the
    embedding ``model.embed(x, window)`` by default, which the fine-tuned head reads, while
    change maps ask for ``CHANGE_MAP_OUTPUT``) over a whole image ``(C, H, W) -> (E, H, W)``,
    or over a batch of images of one size ``(N, C, H, W) -> (N, E, H, W)`` in one pass.

    Each image is first prepared by ``normalize``, which must be the preparation the model was
    trained on (``matter_model.inputs.input_normalizer`` of its config; reflectance, as read,
    by default). Images larger than ``tile`` are run in tiles of ``tile`` pixels plus
    ``margin`` (default ``2 * window``) of context on each side, of which only the centre is
    kept, under ``torch.no_grad``.
    """
    import torch

    if output not in MODEL_OUTPUTS:
        raise ValueError(f"unknown model output {output!r}; choose one of {sorted(MODEL_OUTPUTS)}")
    run_model = getattr(model, MODEL_OUTPUTS[output])
    ctx = 2 * window if margin is None else margin

    def extract(image: np.ndarray) -> np.ndarray:
        batched = image.ndim == 4
        prepared = np.stack([normalize(i) for i in image]) if batched else normalize(image)[None]
        x = torch.from_numpy(np.ascontiguousarray(prepared, dtype=np.float32))
        n, _, h, w = x.shape
        out: np.ndarray | None = None
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            with torch.no_grad():
                for y0 in range(0, h, tile):
                    for x0 in range(0, w, tile):
                        y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                        ya, xa = max(y0 - ctx, 0), max(x0 - ctx, 0)
                        yb, xb = min(y1 + ctx, h), min(x1 + ctx, w)
                        crop = x[:, :, ya:yb, xa:xb].to(device)
                        emb = run_model(crop, window).float().cpu().numpy()
                        if out is None:
                            out = np.empty((n, emb.shape[1], h, w), dtype=np.float32)
                        out[..., y0:y1, x0:x1] = emb[..., y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        finally:
            if was_training and hasattr(model, "train"):
                model.train()
        assert out is not None
        return out if batched else out[0]

    return extract


def feature_distance(features_1: np.ndarray, features_2: np.ndarray) -> np.ndarray:
    """Per-pixel L2 distance ``(H, W)`` between two feature maps ``(E, H, W)``: of two images'
    standardised bands (:func:`cva_features`), the change vector analysis (CVA) distance."""
    if features_1.shape != features_2.shape:
        raise ValueError(f"feature maps differ in shape: {features_1.shape} vs {features_2.shape}")
    diff = features_1.astype(np.float32) - features_2.astype(np.float32)
    return np.sqrt(np.einsum("ehw,ehw->hw", diff, diff))


def detect_changes(
    pair: ChangePair,
    extractor: FeatureExtractor,
    sigma: float = DEFAULT_SIGMA,
    bins: int = DEFAULT_BINS,
) -> ChangeResult:
    """Feature distance, Gaussian smoothing, Otsu over the valid pixels, counts against truth."""
    distance = feature_distance(extractor(pair.image_1), extractor(pair.image_2))
    if sigma > 0:
        distance = ndimage.gaussian_filter(distance, sigma=sigma, mode="reflect")
    valid = np.isfinite(distance)
    if pair.valid is not None:
        valid &= pair.valid.astype(bool)
    threshold = otsu_threshold(distance[valid], bins=bins)
    prediction = (distance > threshold) & valid
    return ChangeResult(
        distance,
        threshold,
        prediction,
        confusion_counts(prediction, pair.truth, valid),
        ranking_quality(distance[valid], pair.truth[valid]),
    )


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


def rgb_preview(image: np.ndarray, rgb: tuple[int, int, int] = (2, 1, 0)) -> np.ndarray:
    """An ``(H, W, 3)`` float image in [0, 1]: bands ``rgb``, each stretched between its own 2-98 %
    (:func:`matter_model.rendering.contrast_stretch`)."""
    out = np.empty((*image.shape[1:], 3), dtype=np.float32)
    for k, c in enumerate(rgb):
        out[..., k] = contrast_stretch(image[c].astype(np.float32))
    return out


def render_change_map(
    pair: ChangePair,
    prediction: np.ndarray,
    path: str | Path | None = None,
    rgb: tuple[int, int, int] = (2, 1, 0),
    title: str | None = None,
) -> bytes:
    """PNG of date 1, date 2 (RGB), truth and prediction side by side; written atomically.

    Prediction colours: white = true change, red = false alarm, blue = missed change, grey =
    invalid. ``rgb`` are the band indices of red, green and blue (B04, B03, B02 in the
    authors' 9-band order).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    truth = pair.truth.astype(bool)
    pred = prediction.astype(bool)
    errors = np.zeros((*truth.shape, 3), dtype=np.float32)
    errors[pred & truth] = (1, 1, 1)
    errors[pred & ~truth] = (1, 0, 0)
    errors[~pred & truth] = (0, 0.4, 1)
    if pair.valid is not None:
        errors[~pair.valid.astype(bool)] = (0.5, 0.5, 0.5)

    fig = Figure(figsize=(16, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    panels = [
        (rgb_preview(pair.image_1, rgb), "date 1"),
        (rgb_preview(pair.image_2, rgb), "date 2"),
        (truth, "truth"),
        (errors, "prediction (white TP, red FP, blue FN)"),
    ]
    for k, (img, name) in enumerate(panels):
        ax = fig.add_subplot(1, 4, k + 1)
        ax.imshow(img, cmap="gray", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title or pair.name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


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
    (``config['inputs']``, see :mod:`matter_model.inputs`) and give the same ``output``.
    With ``previews``, the trained model's change map of each pair is written there as PNG.
    Both networks run on the trained model's device.
    """
    device = next(model.parameters()).device
    untrained = untrained_twin(model, config)
    prepare = input_normalizer(config)
    methods = {
        name: model_features(
            network, window=window, device=str(device), normalize=prepare, output=output
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
