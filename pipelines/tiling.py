"""Triplet tiling: anchor / positive / negative crops from the unchanged windows of a scene stack.

- anchor: unchanged window w at date t_i;
- positive: the same window w at another date t_j (every ordered pair of dates where both are
  valid enough, or ``max_pairs_per_window`` of them drawn at random);
- negative: another unchanged window, drawn at random: of the same scene at date t_i, valid
  enough at t_i and at least ``min_negative_distance_px`` away (centre to centre); or, given a
  :class:`NegativePool`, of another region's scene at its date nearest t_i, valid enough there.

Which triplets to cut is planned first, from the per-date valid fractions alone (a seeded
generator: deterministic for a seed); the pixels are then read a strip of window rows at a time
from a :class:`PixelSource` (a co-registered stack in memory, or :class:`~pipelines.cog_stack.
CogStack` reading COGs directly), cut, and written shard by shard to the patch store while the
next strip decodes. With strips, a negative comes from the anchor's strip, so that no strip needs
another's pixels. Invalid pixels left inside a kept crop are filled with the crop's per-band
median of valid pixels and the crop's valid fraction is recorded, so the store holds no NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import permutations
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import xarray as xr

from matter_model.inputs import REFLECTANCE
from matter_model.patch_store import Encoding, StoreInfo, check_codec, write_shard
from pipelines.blocks import as_blocks
from pipelines.dates import stack_dates
from pipelines.grid import Grid
from pipelines.stack_store import stack_grid

PATCH_COLUMNS = [
    "region",
    "tile",
    "negative_region",
    "anchor_date",
    "positive_date",
    "negative_date",
    "window_row",
    "window_col",
    "negative_row",
    "negative_col",
    "minx",
    "miny",
    "maxx",
    "maxy",
    "crs",
    "transform",
    "anchor_valid_fraction",
    "positive_valid_fraction",
    "negative_valid_fraction",
]
# The plan: which window, dates and negative window each triplet takes (indices into the kept
# windows and the dates of the scene, or of the negative pool for ``negative_date``).
PLAN_COLUMNS = ["window", "anchor", "positive", "negative", "negative_date"]


@dataclass(frozen=True)
class TilingSettings:
    """How triplets are drawn from the unchanged windows (see the module doc).

    ``seed`` makes the draws deterministic; ``min_valid_fraction`` is the valid share a window
    needs at a date to serve as anchor, positive or negative there; ``min_negative_distance_px``
    keeps same-scene negatives away from their anchor (centre to centre);
    ``max_pairs_per_window`` draws that many ordered date pairs per window (None: all of them);
    ``strip_rows`` cuts and writes the scene a strip of that many window rows at a time (None:
    the whole scene at once); ``codec`` compresses a new store (one of
    ``matter_model.patch_store.CODECS``; None: its normalisation's default); a store already
    started keeps its own.
    """

    seed: int = 0
    min_valid_fraction: float = 0.9
    min_negative_distance_px: int = 64
    max_pairs_per_window: int | None = None
    strip_rows: int | None = None
    codec: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise ValueError(
                f"min_valid_fraction must lie in [0, 1], got {self.min_valid_fraction}"
            )
        if self.max_pairs_per_window is not None and self.max_pairs_per_window < 1:
            raise ValueError(
                f"max_pairs_per_window must be at least 1, got {self.max_pairs_per_window}"
            )
        if self.strip_rows is not None and self.strip_rows < 1:
            raise ValueError(f"strip_rows must be at least 1 window row, got {self.strip_rows}")
        if self.codec is not None:
            check_codec(self.codec)


class Strip(Protocol):
    """Rows of one date, read once; windows are cut from it."""

    def crop(self, y: int, x: int, out: np.ndarray) -> np.ndarray:
        """Write the window whose upper-left pixel is (y, x) from the strip's first row into
        ``out`` (band, size, size) of the dtype the rows were read for: float32 reflectance
        (NaN allowed where invalid) or the source's ``encoding`` integers; return its valid
        mask (size, size)."""
        ...


class PixelSource(Protocol):
    """The dates of one scene on one 10 m grid, read a strip of rows at a time."""

    region: str
    tile: str
    dates: list[str]
    grid: Grid
    # The patch store encoding whose integers ``Strip.crop`` writes exactly into an array of its
    # dtype (None: float reflectance only).
    encoding: Encoding | None

    def read_rows(self, y0: int, y1: int, date: int, dtype: np.dtype | str) -> Strip:
        """Grid rows ``[y0, y1)`` of ``date``, to be cut into crops of ``dtype`` (a source may
        prepare its pixels for it once per strip rather than once per crop)."""
        ...

    def valid_fraction(self, size: int) -> np.ndarray:
        """Share of valid pixels of each ``size`` px window: (date, row, col)."""
        ...


@dataclass(frozen=True)
class ArrayStrip:
    """Rows of one date held as reflectance (band, y, x) and valid (y, x) arrays."""

    reflectance: np.ndarray
    valid: np.ndarray

    def crop(self, y: int, x: int, out: np.ndarray) -> np.ndarray:
        """Copy the window at (y, x) into ``out``; return its valid mask."""
        size = out.shape[-1]
        out[...] = self.reflectance[:, y : y + size, x : x + size]
        return self.valid[y : y + size, x : x + size]


class StackSource:
    """A co-registered stack (the contract of :mod:`pipelines.coregistration`) as a pixel source."""

    encoding = None

    def __init__(self, stack: xr.Dataset, bands: Sequence[str]) -> None:
        missing = [b for b in bands if b not in stack["band"].values]
        if missing:
            raise ValueError(
                f"the stack has no band(s) {missing}; it holds {list(stack.band.values)}"
            )
        self.region = str(stack.attrs["region"])
        self.tile = str(stack.attrs.get("tiles", ""))
        self.dates = stack_dates(stack)
        self.grid = stack_grid(stack)
        self._reflectance = stack["reflectance"].sel(band=list(bands)).values
        self._valid = stack["valid"].values

    def read_rows(
        self, y0: int, y1: int, date: int, dtype: np.dtype | str = np.float32
    ) -> ArrayStrip:
        """Rows ``[y0, y1)`` at ``date`` (views, no copy), for float crops: the stack holds
        reflectance, not a store's integers (``encoding`` is None)."""
        if np.dtype(dtype).kind != "f":
            raise ValueError(
                f"a co-registered stack is cut into float reflectance, not {np.dtype(dtype)}; "
                "the patch store encodes it when the shard is written"
            )
        return ArrayStrip(self._reflectance[date, :, y0:y1], self._valid[date, y0:y1])

    def valid_fraction(self, size: int) -> np.ndarray:
        """Share of valid pixels of each ``size`` px window: (date, row, col)."""
        return as_blocks(self._valid, size).mean(axis=(-2, -1))


@dataclass(frozen=True)
class NegativePool:
    """Another region's scene and its change screen: negatives come from its unchanged windows."""

    source: PixelSource
    screen: pd.DataFrame

    def nearest_dates(self, dates: Sequence[str]) -> np.ndarray:
        """For each of ``dates``, the index of the pool's date nearest in time."""
        pool = np.array(self.source.dates, dtype="datetime64[D]")
        wanted = np.array(list(dates), dtype="datetime64[D]")
        return np.abs(wanted[:, None] - pool[None, :]).argmin(axis=1)


@dataclass(frozen=True)
class Triplets:
    """Crops (N, C, S, S), float32 or a store's integers, and their patch table (N rows)."""

    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    patches: pd.DataFrame


@dataclass(frozen=True)
class TilingResult:
    """What :func:`tile_to_store` wrote: its shards and how many triplets."""

    shards: list[Path]
    triplets: int


def all_windows(grid: Grid, size: int) -> pd.DataFrame:
    """Every whole ``size`` px window of ``grid``, all marked unchanged: the screen to use where
    the dates are known not to have changed (a benchmark, a hand-picked region)."""
    rows, cols = grid.height // size, grid.width // size
    row, col = (a.ravel() for a in np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"))
    t = grid.transform
    minx, maxy = t.c + col * size * t.a, t.f + row * size * t.e
    return pd.DataFrame(
        {
            "row": row,
            "col": col,
            "y0": row * size,
            "x0": col * size,
            "size": size,
            "minx": minx,
            "miny": maxy + size * t.e,
            "maxx": minx + size * t.a,
            "maxy": maxy,
            "unchanged": True,
        }
    )


def plan_triplets(
    windows: pd.DataFrame,
    valid_fraction: np.ndarray,
    settings: TilingSettings = TilingSettings(),
    pool: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Which triplets the ``windows`` (kept, unchanged) allow: :data:`PLAN_COLUMNS` per triplet.

    ``valid_fraction`` is (date, row, col). With ``settings.strip_rows``, a negative lies in the
    same strip of window rows as its anchor. ``pool`` = (valid enough (pool date, pool
    window) bool, pool date of each date): negatives from another scene instead.
    """
    min_valid_fraction, strip_rows = settings.min_valid_fraction, settings.strip_rows
    min_negative_distance_px = settings.min_negative_distance_px
    max_pairs_per_window = settings.max_pairs_per_window
    rng = np.random.default_rng(settings.seed)
    size = int(windows["size"].iloc[0]) if len(windows) else 0
    rows, cols = windows["row"].to_numpy(), windows["col"].to_numpy()
    centres = windows[["y0", "x0"]].to_numpy(dtype=np.float64) + size / 2
    strip = rows // strip_rows if strip_rows else np.zeros(len(windows), dtype=int)
    valid_enough = valid_fraction[:, rows, cols] >= min_valid_fraction  # (date, window)
    dates = valid_fraction.shape[0]
    if pool is None:
        negative_dates = np.arange(dates)
    else:  # the pool's candidates do not depend on the anchor window
        pool_enough, negative_dates = pool
        candidates = [np.flatnonzero(pool_enough[negative_dates[i]]) for i in range(dates)]
    plan = []
    for w in range(len(windows)):
        if pool is None:
            far = (np.hypot(*(centres - centres[w]).T) >= min_negative_distance_px) & (
                strip == strip[w]
            )
            candidates = [np.flatnonzero(far & valid_enough[i]) for i in range(dates)]
        pairs = [
            (i, j)
            for i, j in permutations(range(dates), 2)
            if valid_enough[i, w] and valid_enough[j, w] and candidates[i].size
        ]
        if max_pairs_per_window is not None and len(pairs) > max_pairs_per_window:
            chosen = rng.choice(len(pairs), max_pairs_per_window, replace=False)
            pairs = [pairs[k] for k in sorted(chosen)]
        for i, j in pairs:
            negative = int(rng.choice(candidates[i]))
            plan.append((w, i, j, negative, int(negative_dates[i])))
    return pd.DataFrame(plan, columns=PLAN_COLUMNS, dtype=np.int64)


def _fill_invalid(crop: np.ndarray, valid: np.ndarray) -> float:
    """Set the invalid pixels of ``crop`` to the band medians of its valid ones (zeros when
    none is valid; rounded in an integer crop); return its valid share."""
    share = np.count_nonzero(valid) / valid.size
    if share < 1.0:
        fill = np.median(crop[:, valid], axis=1) if share > 0 else np.zeros(len(crop))
        if crop.dtype.kind != "f":
            fill = np.rint(fill)
        crop[:, ~valid] = fill.astype(crop.dtype)[:, None]
    return share


@dataclass(frozen=True)
class _Rows:
    """The rows a part of the plan spans, from grid row ``y0``, read once per date it needs."""

    y0: int
    strips: dict[int, Strip]


def _read_rows(
    source: PixelSource,
    windows: pd.DataFrame,
    plan: pd.DataFrame,
    pooled: bool,
    dtype: np.dtype | str,
) -> _Rows:
    """One read of the rows the windows of a non-empty ``plan`` span, per date they need, for
    crops of ``dtype``; ``pooled``: the negatives come from another source, so their rows are
    not read here."""
    size = int(windows["size"].iloc[0])
    used = windows["row"].to_numpy()[plan["window"]]
    if not pooled:
        used = np.concatenate([used, windows["row"].to_numpy()[plan["negative"]]])
    y0, y1 = int(used.min()) * size, (int(used.max()) + 1) * size
    needed = sorted(set(plan["anchor"]) | set(plan["positive"]))
    return _Rows(y0, {t: source.read_rows(y0, y1, t, dtype) for t in needed})


def _cut(
    source: PixelSource,
    windows: pd.DataFrame,
    plan: pd.DataFrame,
    n_bands: int,
    pool: tuple[PixelSource, pd.DataFrame] | None = None,
    dtype: np.dtype | str = np.float32,
    read: _Rows | None = None,
) -> Triplets:
    """The triplets of a non-empty ``plan`` from its rows ``read`` (read now when not given);
    negatives from ``pool`` (source, kept windows) are read window by window. The crops are
    float32 reflectance, or with an integer ``dtype`` the sources' stored integers."""
    size = int(windows["size"].iloc[0])
    read = read or _read_rows(source, windows, plan, pool is not None, dtype)
    y0, strips = read.y0, read.strips
    negative_source, negative_windows = pool or (source, windows)
    crops = np.empty((3, len(plan), n_bands, size, size), dtype=dtype)
    t = source.grid.transform
    rows = []
    for n, (w, i, j, neg, d) in enumerate(plan[PLAN_COLUMNS].itertuples(index=False)):
        window, negative = windows.iloc[w], negative_windows.iloc[neg]
        shares = []
        for role, date in enumerate((i, j)):
            crop = crops[role, n]
            valid = strips[date].crop(int(window["y0"]) - y0, int(window["x0"]), crop)
            shares.append(_fill_invalid(crop, valid))
        ny0 = int(negative["y0"])
        strip = strips[d] if pool is None else negative_source.read_rows(ny0, ny0 + size, d, dtype)
        top = ny0 - y0 if pool is None else 0
        valid = strip.crop(top, int(negative["x0"]), crops[2, n])
        shares.append(_fill_invalid(crops[2, n], valid))
        rows.append(
            {
                "region": source.region,
                "tile": source.tile,
                "negative_region": negative_source.region,
                "anchor_date": source.dates[i],
                "positive_date": source.dates[j],
                "negative_date": negative_source.dates[d],
                "window_row": int(window["row"]),
                "window_col": int(window["col"]),
                "negative_row": int(negative["row"]),
                "negative_col": int(negative["col"]),
                "minx": window["minx"],
                "miny": window["miny"],
                "maxx": window["maxx"],
                "maxy": window["maxy"],
                "crs": f"EPSG:{source.grid.epsg}",
                "transform": ",".join(
                    repr(float(v)) for v in (t.a, 0.0, window["minx"], 0.0, t.e, window["maxy"])
                ),
                "anchor_valid_fraction": shares[0],
                "positive_valid_fraction": shares[1],
                "negative_valid_fraction": shares[2],
            }
        )
    return Triplets(crops[0], crops[1], crops[2], pd.DataFrame(rows, columns=PATCH_COLUMNS))


def _no_triplets(n_bands: int, size: int) -> Triplets:
    """An empty, typed set of triplets."""
    empty = np.zeros((0, n_bands, size, size), np.float32)
    return Triplets(empty, empty, empty, pd.DataFrame(columns=PATCH_COLUMNS))


def _kept(screen: pd.DataFrame) -> pd.DataFrame:
    """The unchanged windows of a screen, numbered from 0."""
    return screen[screen["unchanged"].astype(bool)].reset_index(drop=True)


def _plan(
    source: PixelSource,
    screen: pd.DataFrame,
    settings: TilingSettings,
    negative_pool: NegativePool | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, tuple[PixelSource, pd.DataFrame] | None]:
    """The kept windows of ``screen``, the plan of their triplets, and the negative pool's
    source and kept windows (None: negatives from the same scene)."""
    kept = _kept(screen)
    pool, pool_masks = None, None
    if negative_pool is not None:
        pool_kept = _kept(negative_pool.screen)
        if len(pool_kept) and len(kept) and pool_kept["size"].iloc[0] != kept["size"].iloc[0]:
            raise ValueError(
                f"the negative pool's windows are {pool_kept['size'].iloc[0]} px, this scene's "
                f"{kept['size'].iloc[0]} px; screen both with the same window"
            )
        if len(pool_kept):
            fractions = negative_pool.source.valid_fraction(int(pool_kept["size"].iloc[0]))
            enough = fractions[:, pool_kept["row"], pool_kept["col"]] >= settings.min_valid_fraction
        else:
            enough = np.zeros((len(negative_pool.source.dates), 0), dtype=bool)
        pool = (negative_pool.source, pool_kept)
        pool_masks = (enough, negative_pool.nearest_dates(source.dates))
    if kept.empty:
        return kept, pd.DataFrame(columns=PLAN_COLUMNS, dtype=np.int64), pool
    fractions = source.valid_fraction(int(kept["size"].iloc[0]))
    return kept, plan_triplets(kept, fractions, settings, pool_masks), pool


def cut_triplets(
    stack: xr.Dataset,
    screen: pd.DataFrame,
    bands: list[str],
    settings: TilingSettings = TilingSettings(),
    negative_pool: NegativePool | None = None,
) -> Triplets:
    """Every triplet the unchanged windows of ``screen`` allow, in memory (see the module doc);
    the scene is one strip whatever ``settings.strip_rows`` says."""
    source = StackSource(stack, bands)
    kept, plan, pool = _plan(source, screen, replace(settings, strip_rows=None), negative_pool)
    if plan.empty:
        return _no_triplets(len(bands), int(screen["size"].iloc[0]) if len(screen) else 0)
    return _cut(source, kept, plan, len(bands), pool)


def count_triplets(
    source: PixelSource,
    screen: pd.DataFrame,
    settings: TilingSettings = TilingSettings(),
    negative_pool: NegativePool | None = None,
) -> int:
    """How many triplets :func:`tile_to_store` writes with the same ``settings`` and
    ``negative_pool``: the plan alone, from the valid masks, with no pixel cut."""
    return len(_plan(source, screen, settings, negative_pool)[1])


def tile_to_store(
    source: PixelSource,
    screen: pd.DataFrame,
    store: str | Path,
    shard_id: str,
    bands: Sequence[str],
    settings: TilingSettings = TilingSettings(),
    negative_pool: NegativePool | None = None,
    normalisation: str = REFLECTANCE,
) -> TilingResult:
    """Cut the triplets of ``screen``'s unchanged windows from ``source`` into the patch store.

    Without ``settings.strip_rows`` the whole scene is one strip and one shard named
    ``shard_id``; with it, strip k of ``strip_rows`` window rows becomes shard
    ``{shard_id}-{k:04d}``, written in a background thread while strip k+1 decodes, so memory
    follows the strip, not the scene. Reruns with the same inputs and settings rewrite the same
    shards with the same content; a rerun with another ``strip_rows`` leaves the old shards in
    place, so give it a new ``shard_id``. An empty plan still writes an empty shard (a valid,
    empty store for an all-cloudy region). With ``negative_pool``, negatives come from another
    region's unchanged windows. ``normalisation`` names how the source's pixels are normalised
    (one of ``matter_model.inputs.NORMALISATIONS``).
    """
    size = int(screen["size"].iloc[0]) if len(screen) else 0
    info = StoreInfo.encoded(tuple(bands), size, normalisation, codec=settings.codec)
    kept, plan, pool = _plan(source, screen, settings, negative_pool)
    strip_rows, n_bands = settings.strip_rows, len(bands)
    sources = [source] if pool is None else [source, pool[0]]
    exact = all(s.encoding is not None and s.encoding == info.encoding for s in sources)
    dtype = info.dtype if exact else np.float32

    def read(part: pd.DataFrame) -> _Rows | None:
        return _read_rows(source, kept, part, pool is not None, dtype) if len(part) else None

    named = (
        (
            f"{shard_id}-{k:04d}" if strip_rows else shard_id,
            _cut(source, kept, part, n_bands, pool, dtype, rows)
            if rows
            else _no_triplets(n_bands, size),
        )
        for (k, part), rows in _read_ahead(_strips(kept, plan, strip_rows), read)
    )
    return TilingResult(_write_shards(store, info, named), len(plan))


def _read_ahead(
    parts: Iterable[tuple[int, pd.DataFrame]], read: Callable[[pd.DataFrame], _Rows | None]
) -> Iterator[tuple[tuple[int, pd.DataFrame], _Rows | None]]:
    """Each of ``parts`` with its rows, the next part's rows read in a background thread while
    the caller cuts the current one: decoding (which releases the GIL) overlaps cutting, and at
    most two parts' rows are held at once."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending: tuple[tuple[int, pd.DataFrame], Future[_Rows | None]] | None = None
        for part in parts:
            future = reader.submit(read, part[1])
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (part, future)
        if pending is not None:
            yield pending[0], pending[1].result()


def _strips(
    kept: pd.DataFrame, plan: pd.DataFrame, strip_rows: int | None
) -> Iterator[tuple[int, pd.DataFrame]]:
    """The plan in strips of ``strip_rows`` window rows (one strip without): (strip number, its
    triplets); an empty plan is one empty strip 0."""
    window_rows = kept["row"].to_numpy()[plan["window"].to_numpy()] if len(plan) else np.array([])
    strips = (window_rows // strip_rows).astype(int) if strip_rows else np.zeros(len(plan), int)
    for k in np.unique(strips) if len(plan) else [0]:
        yield int(k), plan[strips == k]


def _write_shards(
    store: str | Path, info: StoreInfo, named: Iterable[tuple[str, Triplets]]
) -> list[Path]:
    """Write each (shard name, triplets) as a shard of ``store``, in one background thread, so
    that the next triplets are cut while the last ones are written; return the shards."""
    shards: list[Path] = []
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future[Path] | None = None
        for name, triplets in named:
            if pending is not None:
                shards.append(pending.result())
            pending = writer.submit(
                write_shard,
                store,
                name,
                info,
                triplets.anchor,
                triplets.positive,
                triplets.negative,
                triplets.patches,
            )
        if pending is not None:
            shards.append(pending.result())
    return shards
