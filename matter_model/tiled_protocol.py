"""The MATTER authors' released OSCD evaluation: 32 px tiles scored batch by batch.

:mod:`matter_model.change_detection` scores whole cities (the ``city`` protocol). This module
reproduces instead what the authors' released code does (Kitware/geowatch,
``dev/experiments/rutgers_material_seg_experiments/pretrain_contrastive_resnet_enc.py``,
``Trainer.validate``, with ``geowatch/tasks/rutgers_material_seg/configs/onera.yaml``; its test
loader is ``SequenceDataset`` of ``datasets/iarpa_contrastive_dataset.py`` over ndsampler's
``new_video_sample_grid``). For every pair, in order:

1. **Tiles.** The pair is cut into ``tile`` px tiles from the top-left with a stride of ``tile``.
   Where the last row or column of tiles falls short of the bottom or right edge, one more tile
   is aligned to that edge, overlapping its neighbour (``edge="shift"``: the sample grid's
   ``kwarray.SlidingWindow(keepbound=True)``); ``edge="drop"`` leaves the uncovered strip out.
   A side shorter than one tile gives no tile.
2. **Which tiles.** ``tiles="all"``: every tile; ``tiles="change"``: the tiles whose truth holds
   at least one change pixel (the authors' test loader keeps the sample grid's ``positives``,
   the windows that overlap a change annotation, because ``SequenceDataset`` defaults to
   ``training=True``; ndsampler tests the overlap against each annotation's bounding box, so its
   set can be somewhat larger). A tile that is not fully valid (a pixel marked invalid, or not
   finite, at either date) is skipped under both choices: the authors' loader would pad it with
   NaN and count its unlabelled pixels as no change.
3. **Per-tile standardisation.** Each band of each tile of each date becomes
   ``(x - mean) / std`` over that tile alone, the std with Bessel's correction as the authors'
   ``utils.stad_image`` (``torch.var``) takes it; a flat band is only centred (theirs would be
   NaN). This replaces the per-image preparation for every method: networks see the
   standardised tile, and CVA's features are the standardised bands.
4. **Features of the tile alone.** The extractor runs on the tiles as a batch
   ``(N, C, T, T) -> (N, E, T, T)``, so a pixel's 13 x 13 window is padded inside its tile and
   sees nothing outside it. (The authors replicate-pad the tile and run the network on each
   window's crop; here a network handles the tile border as it does an image's.)
5. **Distance.** Per-pixel L2 distance between the dates' features, blurred per tile by
   torchvision's ``gaussian_blur(kernel_size=13)``: a 13 x 13 Gaussian whose sigma is
   ``0.3 * ((13 - 1) * 0.5 - 1) + 0.8 = 2.3``, over the tile padded by reflection
   (:func:`blur_tiles`, written here in numpy; torchvision is not a dependency).
6. **Otsu per batch.** The chosen tiles of all pairs form one stream, pair after pair in the
   order given, cut into batches of ``otsu_batch`` (32) consecutive tiles; Otsu's threshold
   (256 bins) is computed over every pixel of a batch and ``distance > threshold`` is change.
   This is the authors' test ``DataLoader``: a sequential sampler over the sample grid, which
   lists video (city) after video, with ``make_loader``'s default ``drop_last=True``, so a
   batch can span two cities and the tiles of the last, incomplete batch are never scored.
7. **Counts.** Precision, recall and F1 of the change class from counts summed over every scored
   pixel of every pair (micro, as the authors' ``eval_utils.compute_jaccard``), per pair from
   the pixels of its scored tiles (a pixel of two overlapping edge tiles counts twice, as it
   does for the authors); ROC AUC and average precision of the blurred distance per pair over
   its scored pixels, where both classes occur.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matter_model.change_detection import DEFAULT_BINS, ChangePair, otsu_threshold
from matter_model.metrics import ConfusionCounts, confusion_counts, ranking_quality

# ``(N, C, T, T)`` tiles -> ``(N, E, T, T)`` features of each tile alone.
BatchExtractor = Callable[[np.ndarray], np.ndarray]

TILE = 32  # onera.yaml: data.image_size
BLUR_KERNEL = 13  # onera.yaml: evaluation.inference_window, gaussian_blur's kernel_size
OTSU_BATCH = 32  # onera.yaml: evaluation.batch_size
TILE_CHOICES = ("all", "change")
EDGE_CHOICES = ("shift", "drop")
DEFAULT_TILES = "change"  # the authors' test loader (SequenceDataset(training=True))
DEFAULT_EDGE = "shift"  # the authors' sample grid (SlidingWindow(keepbound=True))


def gaussian_sigma(kernel_size: int) -> float:
    """The sigma torchvision's ``gaussian_blur`` takes for a kernel size when none is given:
    ``0.3 * ((k - 1) * 0.5 - 1) + 0.8`` (2.3 for 13)."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def gaussian_kernel(kernel_size: int, sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of torchvision's ``gaussian_blur``: ``kernel_size`` taps at
    ``-(k - 1) / 2 .. (k - 1) / 2``, weights ``exp(-x^2 / (2 sigma^2))`` summing to 1 (float64).
    The 2-D kernel is its outer product with itself."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"the blur kernel size must be odd and positive, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"the blur sigma must be positive, got {sigma}")
    half = (kernel_size - 1) / 2
    x = np.linspace(-half, half, kernel_size)
    pdf = np.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def blur_tiles(
    maps: np.ndarray, kernel_size: int = BLUR_KERNEL, sigma: float | None = None
) -> np.ndarray:
    """Blur each ``(H, W)`` map of ``maps`` ``(N, H, W)`` on its own, as torchvision's
    ``gaussian_blur(maps, kernel_size)`` does: pad by reflection (the edge pixel not repeated),
    then correlate with the 2-D Gaussian (applied here as its two 1-D passes). Float64 out."""
    sigma = gaussian_sigma(kernel_size) if sigma is None else sigma
    kernel = gaussian_kernel(kernel_size, sigma)
    x = np.asarray(maps, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got {x.shape}")
    r = kernel_size // 2
    if r >= min(x.shape[1:]):
        raise ValueError(f"reflect padding of {r} px needs maps larger than {r}, got {x.shape}")
    padded = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    h, w = x.shape[1:]
    rows = sum(k * padded[:, i : i + h, :] for i, k in enumerate(kernel))
    return sum(k * rows[:, :, j : j + w] for j, k in enumerate(kernel))


def tile_starts(length: int, tile: int, edge: str = DEFAULT_EDGE) -> list[int]:
    """Where tiles of ``tile`` px start along a side of ``length`` px: every ``tile`` px from 0
    while a whole tile fits, then (``edge="shift"``) one more ending at the edge if the last
    one did not."""
    if edge not in EDGE_CHOICES:
        raise ValueError(f"unknown edge rule {edge!r}; choose one of {list(EDGE_CHOICES)}")
    starts = list(range(0, length - tile + 1, tile))
    if edge == "shift" and starts and starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_grid(shape: tuple[int, int], tile: int, edge: str = DEFAULT_EDGE) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the tiles of an ``(H, W)`` image, row by row."""
    ys, xs = tile_starts(shape[0], tile, edge), tile_starts(shape[1], tile, edge)
    return [(y, x) for y in ys for x in xs]


def cut_tiles(image: np.ndarray, corners: list[tuple[int, int]], tile: int) -> np.ndarray:
    """The tiles of ``image`` (``(..., H, W)``) at ``corners``: ``(N, ..., tile, tile)``."""
    lead = image.shape[:-2]
    out = np.empty((len(corners), *lead, tile, tile), dtype=image.dtype)
    for n, (y, x) in enumerate(corners):
        out[n] = image[..., y : y + tile, x : x + tile]
    return out


def standardise_tiles(tiles: np.ndarray) -> np.ndarray:
    """Each band of each tile ``(N, C, T, T)`` standardised over that tile: ``(x - mean) /
    std``, std with Bessel's correction (``torch.var``'s default); a flat band only centred."""
    x = np.asarray(tiles, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"tiles must be (N, C, T, T), got {x.shape}")
    mean = x.mean(axis=(2, 3), keepdims=True)
    std = x.std(axis=(2, 3), ddof=1, keepdims=True)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def tile_bands(tiles: np.ndarray) -> np.ndarray:
    """CVA under this protocol: the (per-tile standardised) bands are the features."""
    return tiles


@dataclass(frozen=True)
class TiledProtocol:
    """The settings of the authors' protocol (the module docstring says what each does)."""

    tile: int = TILE
    tiles: str = DEFAULT_TILES
    edge: str = DEFAULT_EDGE
    blur_kernel: int = BLUR_KERNEL
    otsu_batch: int = OTSU_BATCH
    bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if self.tiles not in TILE_CHOICES:
            raise ValueError(f"unknown tiles {self.tiles!r}; choose one of {list(TILE_CHOICES)}")
        if self.edge not in EDGE_CHOICES:
            raise ValueError(f"unknown edge rule {self.edge!r}; choose one of {list(EDGE_CHOICES)}")
        if self.otsu_batch < 1:
            raise ValueError(f"the Otsu batch must hold at least one tile, got {self.otsu_batch}")
        gaussian_kernel(self.blur_kernel, self.blur_sigma)  # checks the kernel size
        if self.tile <= self.blur_kernel // 2:
            raise ValueError(
                f"tiles of {self.tile} px are too small for the reflect padding of a "
                f"{self.blur_kernel} px blur: they need more than {self.blur_kernel // 2} px"
            )

    @property
    def blur_sigma(self) -> float:
        return gaussian_sigma(self.blur_kernel)

    def settings(self) -> dict[str, Any]:
        """The settings as ``metrics.json`` records them."""
        return {
            "tile_size": self.tile,
            "edge_tiles": self.edge,
            "tiles": self.tiles,
            "invalid_tiles": "skipped",
            "standardisation": "per tile and band: (x - mean) / std, std with ddof=1",
            "blur_kernel": self.blur_kernel,
            "blur_sigma": self.blur_sigma,
            "blur_padding": "reflect",
            "otsu_batch": self.otsu_batch,
            "otsu_bins": self.bins,
            "otsu_stream": "all pairs' tiles in order, pair after pair",
            "drop_last": True,
        }


@dataclass(frozen=True)
class PairTiles:
    """The chosen tiles of one pair, standardised, with their truth, and how many were left out."""

    name: str
    corners: list[tuple[int, int]]
    tiles_1: np.ndarray
    tiles_2: np.ndarray
    truth: np.ndarray
    grid: int
    invalid: int


def choose_tiles(pair: ChangePair, protocol: TiledProtocol) -> PairTiles:
    """Cut ``pair`` into the protocol's grid, keep its fully valid tiles (with a change pixel
    when ``tiles == "change"``) and standardise each."""
    corners = tile_grid(pair.truth.shape, protocol.tile, protocol.edge)
    valid = np.isfinite(pair.image_1).all(axis=0) & np.isfinite(pair.image_2).all(axis=0)
    if pair.valid is not None:
        valid &= pair.valid.astype(bool)
    t = protocol.tile
    truth = pair.truth.astype(bool)
    full = [c for c in corners if valid[c[0] : c[0] + t, c[1] : c[1] + t].all()]
    chosen = [
        c for c in full if protocol.tiles == "all" or truth[c[0] : c[0] + t, c[1] : c[1] + t].any()
    ]
    return PairTiles(
        pair.name,
        chosen,
        standardise_tiles(cut_tiles(pair.image_1, chosen, t)),
        standardise_tiles(cut_tiles(pair.image_2, chosen, t)),
        cut_tiles(truth, chosen, t),
        grid=len(corners),
        invalid=len(corners) - len(full),
    )


def tile_distances(
    extractor: BatchExtractor, tiles_1: np.ndarray, tiles_2: np.ndarray, chunk: int = 64
) -> np.ndarray:
    """Per-pixel L2 distance ``(N, T, T)`` between the features of each tile at both dates,
    the extractor called on at most ``chunk`` tiles at a time."""
    out = np.empty((tiles_1.shape[0], *tiles_1.shape[2:]), dtype=np.float32)
    for a in range(0, tiles_1.shape[0], chunk):
        f1 = np.asarray(extractor(tiles_1[a : a + chunk]), dtype=np.float32)
        f2 = np.asarray(extractor(tiles_2[a : a + chunk]), dtype=np.float32)
        if f1.shape != f2.shape or f1.shape[0] != len(tiles_1[a : a + chunk]):
            raise ValueError(f"features of a chunk differ in shape: {f1.shape} vs {f2.shape}")
        diff = f1 - f2
        out[a : a + chunk] = np.sqrt(np.einsum("nehw,nehw->nhw", diff, diff))
    return out


def batch_thresholds(
    distances: np.ndarray, batch: int = OTSU_BATCH, bins: int = DEFAULT_BINS
) -> list[float]:
    """Otsu's threshold of each whole batch of ``batch`` consecutive maps of ``distances``
    ``(N, T, T)``; the last, incomplete batch has none (``drop_last``)."""
    return [
        otsu_threshold(distances[a : a + batch], bins=bins)
        for a in range(0, len(distances) - batch + 1, batch)
    ]


@dataclass
class _Scores:
    """One method's stream: tiles wait for a full batch, then count towards their pair."""

    protocol: TiledProtocol
    pending: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    counts: dict[str, ConfusionCounts] = field(default_factory=dict)
    tiles: dict[str, int] = field(default_factory=dict)
    scored: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    thresholds: list[float] = field(default_factory=list)

    def add(self, name: str, distances: np.ndarray, truth: np.ndarray) -> None:
        if name in self.counts:
            raise ValueError(f"pair name {name!r} occurs twice")
        self.counts[name], self.tiles[name], self.scored[name] = ConfusionCounts(), 0, []
        self.pending.extend((name, d, t) for d, t in zip(distances, truth, strict=True))
        batch = self.protocol.otsu_batch
        while len(self.pending) >= batch:
            self._score(self.pending[:batch])
            del self.pending[:batch]

    def _score(self, batch: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        threshold = otsu_threshold(np.stack([d for _, d, _ in batch]), bins=self.protocol.bins)
        self.thresholds.append(threshold)
        for name, distance, truth in batch:
            self.counts[name] = self.counts[name] + confusion_counts(distance > threshold, truth)
            self.tiles[name] += 1
            self.scored[name].append((distance, truth))

    def result(self) -> dict[str, Any]:
        per_pair: dict[str, dict[str, Any]] = {}
        for name, counts in self.counts.items():
            scored = self.scored[name]
            ranking = (
                ranking_quality(
                    np.concatenate([d.ravel() for d, _ in scored]),
                    np.concatenate([t.ravel() for _, t in scored]),
                )
                if scored
                else {"auc": None, "average_precision": None}
            )
            per_pair[name] = {
                **counts.as_dict(),
                "pixels": self.tiles[name] * self.protocol.tile**2,
                "tiles": self.tiles[name],
                **ranking,
            }
        total = sum(self.counts.values(), ConfusionCounts())
        scored_tiles = sum(self.tiles.values())
        macro: dict[str, float | None] = {}
        for key in ("auc", "average_precision"):
            values = [r[key] for r in per_pair.values() if r[key] is not None]
            macro[key] = float(np.mean(values)) if values else None
        return {
            "per_pair": per_pair,
            "micro": {
                **total.as_dict(),
                "pixels": scored_tiles * self.protocol.tile**2,
                "tiles": scored_tiles,
                "batches": len(self.thresholds),
            },
            "macro": macro,
            "thresholds": self.thresholds,
            "tiles_dropped_last_batch": len(self.pending),
        }


def evaluate_tiled(
    pairs: Iterable[ChangePair],
    methods: dict[str, BatchExtractor],
    protocol: TiledProtocol | None = None,
    chunk: int = 64,
) -> dict[str, dict[str, Any]]:
    """Every method on every pair under the authors' protocol (one pass over ``pairs``, so they
    may stream; every method sees the same tiles in the same batches).

    Returns ``{method: {"per_pair": {name: {precision, recall, f1, tp, fp, fn, tn, pixels,
    tiles, auc, average_precision}}, "micro": {precision, recall, f1, tp, fp, fn, tn, pixels,
    tiles, batches}, "macro": {auc, average_precision}, "thresholds": [one per batch],
    "tiles_dropped_last_batch": n, "tile_counts": {grid, invalid, chosen}}}``: micro figures from
    the counts summed over every scored pixel, macro figures the means over the pairs whose
    scored pixels hold both classes. ``methods`` map ``(N, C, T, T)`` standardised tiles to
    ``(N, E, T, T)`` features (:func:`tile_bands` for CVA).
    """
    protocol = protocol or TiledProtocol()
    scores = {m: _Scores(protocol) for m in methods}
    grid = invalid = chosen = 0
    for pair in pairs:
        cut = choose_tiles(pair, protocol)
        grid, invalid, chosen = grid + cut.grid, invalid + cut.invalid, chosen + len(cut.corners)
        for method, extractor in methods.items():
            distances = tile_distances(extractor, cut.tiles_1, cut.tiles_2, chunk)
            if len(distances):
                distances = blur_tiles(distances, protocol.blur_kernel)
            scores[method].add(pair.name, distances, cut.truth)
    tile_counts = {"grid": grid, "invalid": invalid, "chosen": chosen}
    return {m: {**s.result(), "tile_counts": tile_counts} for m, s in scores.items()}
