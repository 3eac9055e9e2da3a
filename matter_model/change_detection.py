"""Unsupervised change detection on whole scenes: this project's ``city`` protocol for OSCD.

For a pair of co-registered images of one place at two dates:

1. a feature extractor maps each image ``(C, H, W)`` to per-pixel features ``(E, H, W)``;
2. the change score of a pixel is the L2 distance between its two feature vectors;
3. the score map is smoothed by a Gaussian (``sigma`` in pixels; 0 disables it);
4. Otsu's threshold, computed over the valid pixels of that pair alone, splits it:
   change = score > threshold.

Each pair's result is scored against its truth (:mod:`matter_model.metrics`);
:mod:`matter_model.change_evaluation` runs methods over many pairs and sums the figures, and
:mod:`matter_model.rendering` draws a change map.

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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from matter_model.inputs import Preparation, as_reflectance, standardise
from matter_model.metrics import ConfusionCounts, confusion_counts, ranking_quality

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
    return standardise(image, robust=True)


def model_features(
    model: Any,
    window: int = 13,
    device: str = "cpu",
    tile: int = 512,
    margin: int | None = None,
    prepare: Preparation = as_reflectance,
    output: str = "embedding",
) -> FeatureExtractor:
    """A feature extractor running the model's ``output`` (a key of ``MODEL_OUTPUTS``; the
    embedding ``model.embed(x, window)`` by default, which the fine-tuned head reads, while
    change maps ask for ``CHANGE_MAP_OUTPUT``) over a whole image ``(C, H, W) -> (E, H, W)``,
    or over a batch of images of one size ``(N, C, H, W) -> (N, E, H, W)`` in one pass.

    Each image is first prepared by ``prepare``, which must be the preparation the model was
    trained on (``matter_model.inputs.input_preparation`` of its config; reflectance, as read,
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
        prepared = np.stack([prepare(i) for i in image]) if batched else prepare(image)[None]
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
