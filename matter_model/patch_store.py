"""The patch store: the on-disk contract between the tiling pipeline and the model.

Layout (format ``matter-patch-store`` version 2)::

    <root>/
      store.json              {"format", "version", "bands", "patch_size", "normalisation",
                               "dtype", "scale", "offset", "codec"}
      shards/<shard_id>/      a zarr v3 group, visible only once complete
        anchor    (N, C, S, S) ``dtype`` (see ``normalisation``), window w at date t_i
        positive  (N, C, S, S) ``dtype``, the same window at another date t_j
        negative  (N, C, S, S) ``dtype``, another unchanged window
        patches.csv           one row per triplet (region, tile, dates, bbox, CRS, transform, ...)
      manifests/<shard_id>.parquet   optional: the shard's triplet manifest, GeoParquet
                              (``pipelines.manifest``: footprint, dates, STAC item ids, scores)
      provenance.json         optional: {"manifest_digest", "stac_items", "product_level",
                              "gsd_m", "shards": {shard_id: {"manifest", "sha256", "items"}}}

``normalisation`` says what the numbers are (``matter_model.inputs.NORMALISATIONS``):
``reflectance`` (DN / 10000, the STAC path's L2A surface reflectance) or ``scene-standardised``
(each band of each scene date robustly standardised over the whole scene, as the OSCD
pretraining store holds them). A model trained on a store sees its inputs that way; its
checkpoint records it so that evaluation feeds it alike. Version 1 stores, still read, called
the key ``values``; a ``store.json`` with neither (written before it existed) holds reflectance.

The numbers are kept as Sentinel-2 keeps reflectance: scaled integers, ``value = stored * scale
+ offset``, decoded to float32 by the reader (:class:`Encoding`). Reflectance is the L2A DN
itself (uint16, scale 1e-4, offset -0.1, the BOA offset of processing baseline 04.00), so it
round-trips exactly; scene-standardised values are int16 steps of 2^-8 of a robust standard
deviation, saturating at 128 of them. ``float32`` (scale 1, offset 0) keeps any value as
given, and is what stores written before the encoding existed hold. The codec is named in
``store.json`` (:data:`CODECS`); each normalisation has its own default
(:data:`DEFAULT_CODECS`), chosen by ``benchmarks/patch_store.py`` and ``benchmarks/tiling.py``.

Each array is sharded: one file per 64 triplets, one compressed chunk per triplet inside it, so a
random read decodes only the patch it wants.

``provenance.json`` is what a model card cites of the data (``matter_model.export``):
``manifest_digest`` is the SHA-256 of the sorted SHA-256s of the manifests of the store's
shards, one per line, so it does not depend on the order partitions were tiled in; ``stac_items``
counts the distinct STAC items behind them. :func:`record_manifest` rewrites it under a lock
whenever a shard's manifest is written; a store without it (written before it existed, or by
another tiler) reads as recording nothing.

A shard is written under a hidden temporary name, fsynced and renamed into place
(``matter_model.atomic_io.atomic_directory``), so a reader never sees a half-written shard, even
after the writer is killed with SIGKILL; rewriting a shard with the same id swaps it whole, and
the same inputs give byte-identical files, so reruns are idempotent. Readers ignore every name
that starts with a dot; the next write removes what killed writers left behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import zarr
from torch.utils.data import Dataset

from matter_model.atomic_io import atomic_directory, atomic_write_text
from matter_model.inputs import NORMALISATIONS, REFLECTANCE, SCENE_STANDARDISED

FORMAT = "matter-patch-store"
PROVENANCE = "provenance.json"
# Version 2 renamed store.json's ``values`` to ``normalisation``; nothing else changed.
VERSION = 2
READABLE_VERSIONS = (1, 2)
ROLES = ("anchor", "positive", "negative")
# One file (zarr shard) holds this many triplets of a role; inside it each triplet is its own
# compressed chunk, so a random read decodes one patch, not its 63 neighbours.
TRIPLETS_PER_SHARD_FILE = 64

# Compressors by name, as store.json records them; docs/benchmarks.md compares them.
CODECS: dict[str, Callable[[], list]] = {
    "zstd-1": lambda: [zarr.codecs.ZstdCodec(level=1)],
    "zstd-3": lambda: [zarr.codecs.ZstdCodec(level=3)],
    "zstd-9": lambda: [zarr.codecs.ZstdCodec(level=9)],
    "blosc-zstd-shuffle": lambda: [
        zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    ],
    "blosc-zstd-bitshuffle": lambda: [
        zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    ],
    "blosc-lz4-shuffle": lambda: [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "blosc-lz4-bitshuffle": lambda: [
        zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    ],
}


# What a store.json without a "codec" key (written before the key existed) was compressed with.
DEFAULT_CODEC = "zstd-3"


class PatchStoreError(ValueError):
    """The patch store is missing, malformed, or does not match what the caller expects."""


def check_codec(codec: str) -> str:
    """``codec`` if it names one of :data:`CODECS`; else an error naming the choices."""
    if codec not in CODECS:
        raise PatchStoreError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    return codec


@dataclass(frozen=True)
class Encoding:
    """How numbers are kept on disk: ``stored = round((value - offset) / scale)`` as ``dtype``
    (as given for a float dtype), read back as ``stored * scale + offset`` in float32.

    A value beyond what the integer type keeps is an error, or with ``saturate`` is kept as the
    nearest value it does keep.
    """

    dtype: str = "float32"
    scale: float = 1.0
    offset: float = 0.0
    saturate: bool = False

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"

    def limits(self) -> tuple[float, float]:
        """The smallest and largest value the encoding keeps."""
        if self.is_float:
            return -np.inf, np.inf
        low, high = self._integer_range()
        return low * self.scale + self.offset, high * self.scale + self.offset

    def _integer_range(self) -> tuple[int, int]:
        info = np.iinfo(self.dtype)
        return int(info.min), int(info.max)

    def encode(self, values: np.ndarray, name: str = "values") -> np.ndarray:
        """``values`` as stored; a value the encoding cannot keep is an error naming it."""
        if self.is_float:
            return values.astype(self.dtype, copy=False)
        lo, hi = self.limits()
        vmin, vmax = (float(values.min()), float(values.max())) if values.size else (lo, hi)
        if not self.saturate and (vmin < lo or vmax > hi):
            raise PatchStoreError(
                f"{name} spans [{vmin:.4g}, {vmax:.4g}], outside [{lo:.4g}, {hi:.4g}] that "
                f"{self.dtype} at scale {self.scale:g} and offset {self.offset:g} keeps; write "
                "this store as float32 (Encoding()) or fix the values"
            )
        stored = np.empty(values.shape, dtype=self.dtype)
        # A patch at a time: the float64 arithmetic stays in cache, and memory is one patch's.
        for given, kept in zip(_rows(values), _rows(stored), strict=True):
            exact = given.astype(np.float64)
            exact -= self.offset
            exact /= self.scale
            if self.saturate:
                np.clip(exact, *self._integer_range(), out=exact)
            kept[...] = np.rint(exact, out=exact)
        return stored

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Stored numbers back as float32 values."""
        if self.is_float:
            return stored.astype(np.float32, copy=False)
        return (stored * self.scale + self.offset).astype(np.float32)


def _rows(array: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """``array`` cut along its first axis (itself whole when it has at most one dimension)."""
    return array if array.ndim > 1 else [array]


# The integer encoding of each kind of values (see the module docstring). A reflectance the
# uint16 DN cannot hold is a bug upstream; a standardised value beyond 128 robust standard
# deviations (a cloud over a dark band) is an outlier, kept as the extreme it is.
ENCODINGS: dict[str, Encoding] = {
    REFLECTANCE: Encoding("uint16", 1e-4, -0.1),
    SCENE_STANDARDISED: Encoding("int16", 2.0**-8, 0.0, saturate=True),
}
# The codec of a new store of each normalisation: LZ4 over bit-shuffled integers. Compressing was
# the largest cost of tiling (256 px patches of 12 bands), and LZ4 does it several times faster
# than zstd; shuffling the bits rather than the bytes of each integer makes the patches about a
# tenth smaller still, for about a tenth more tiling CPU. Figures: docs/benchmarks.md.
DEFAULT_CODECS: dict[str, str] = {
    REFLECTANCE: "blosc-lz4-bitshuffle",
    SCENE_STANDARDISED: "blosc-lz4-bitshuffle",
}


@dataclass(frozen=True)
class StoreInfo:
    """What every shard of a store shares: its layout (bands, patch size, normalisation) and how
    the numbers are kept (encoding, codec)."""

    bands: tuple[str, ...]
    patch_size: int
    dtype: str = "float32"
    normalisation: str = REFLECTANCE
    scale: float = 1.0
    offset: float = 0.0
    codec: str = DEFAULT_CODEC

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise PatchStoreError(
                f"store normalisation must be one of {NORMALISATIONS}, not {self.normalisation!r}"
            )
        check_codec(self.codec)

    @classmethod
    def encoded(
        cls,
        bands: tuple[str, ...],
        patch_size: int,
        normalisation: str,
        codec: str | None = None,
    ) -> StoreInfo:
        """A store of ``normalisation``'s numbers kept in their integer encoding
        (:data:`ENCODINGS`), compressed by ``codec`` (default: :data:`DEFAULT_CODECS`)."""
        enc = ENCODINGS[normalisation]
        codec = DEFAULT_CODECS[normalisation] if codec is None else codec
        return cls(tuple(bands), patch_size, enc.dtype, normalisation, enc.scale, enc.offset, codec)

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.dtype, self.scale, self.offset, ENCODINGS[self.normalisation].saturate)

    def same_layout(self, other: StoreInfo) -> bool:
        """Whether patches of ``other`` can join this store (its encoding may differ)."""
        return (self.bands, self.patch_size, self.normalisation) == (
            other.bands,
            other.patch_size,
            other.normalisation,
        )

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "bands": list(self.bands),
            "patch_size": self.patch_size,
            "normalisation": self.normalisation,
            "dtype": self.dtype,
            "scale": self.scale,
            "offset": self.offset,
            "codec": self.codec,
        }


def normalisation_of(meta: dict) -> str:
    """The normalisation a ``store.json``'s contents declare, whatever their version."""
    return meta.get("normalisation", meta.get("values", REFLECTANCE))


def read_info(root: str | Path) -> StoreInfo:
    """Read ``store.json``; raise a PatchStoreError that says what to do when it is absent."""
    path = Path(root) / "store.json"
    if not path.exists():
        raise PatchStoreError(
            f"no patch store at {root}: {path.name} is missing. Materialise `patch_triplets` "
            "first (or point the config's `patch_store` at an existing store)."
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        raise PatchStoreError(
            f"{path} is not a {FORMAT} store of version {' or '.join(map(str, READABLE_VERSIONS))}"
            f" (found {meta.get('format')} v{meta.get('version')}): re-tile it with this version"
        )
    return StoreInfo(
        tuple(meta["bands"]),
        int(meta["patch_size"]),
        meta.get("dtype", "float32"),
        normalisation_of(meta),
        float(meta.get("scale", 1.0)),
        float(meta.get("offset", 0.0)),
        meta.get("codec", DEFAULT_CODEC),
    )


def manifest_path(root: str | Path, shard_id: str) -> Path:
    """Where the triplet manifest of shard ``shard_id`` lives."""
    return Path(root) / "manifests" / f"{shard_id}.parquet"


def read_provenance(root: str | Path) -> dict:
    """The store's ``provenance.json``, or {} when it records none."""
    path = Path(root) / PROVENANCE
    return json.loads(path.read_text()) if path.exists() else {}


def manifest_digest(digests: Iterable[str]) -> str:
    """The SHA-256 of the sorted manifest SHA-256s, one per line: independent of their order."""
    return hashlib.sha256("".join(f"{d}\n" for d in sorted(digests)).encode()).hexdigest()


def record_manifest(
    root: str | Path, shard_id: str, sha256: str, items: Iterable[str], **facts: object
) -> dict:
    """Record shard ``shard_id``'s manifest (its SHA-256 and the STAC item ids behind it) and
    ``facts`` (``product_level``, ``gsd_m``) in ``provenance.json``; return what it now holds.

    The digest and item count are recomputed over every shard of the store that has a recorded
    manifest (shards no longer in the store are dropped), under an exclusive lock, so partitions
    tiled at once by several processes on one host do not lose each other's records.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".provenance.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        provenance = {**read_provenance(root), **facts}
        shards = provenance.get("shards", {})
        shards[shard_id] = {
            "manifest": manifest_path(".", shard_id).as_posix(),
            "sha256": sha256,
            "items": sorted(set(items)),
        }
        present = set(shard_ids(root))
        shards = {k: v for k, v in sorted(shards.items()) if k in present}
        provenance.update(
            manifest_digest=manifest_digest(v["sha256"] for v in shards.values()),
            stac_items=len({i for v in shards.values() for i in v["items"]}),
            shards=shards,
        )
        atomic_write_text(root / PROVENANCE, json.dumps(provenance, indent=2, sort_keys=True))
    return provenance


def write_shard(
    root: str | Path,
    shard_id: str,
    info: StoreInfo,
    anchor: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray,
    patches: pd.DataFrame,
) -> Path:
    """Write one shard atomically and return its path.

    The arrays are (N, C, S, S) with C = len(info.bands) and S = info.patch_size: float values,
    or numbers already stored in ``info``'s encoding (an array of its integer dtype);
    ``patches`` has N rows. An existing shard with the same id is replaced whole. A shard joining
    an existing store is kept in that store's encoding and codec, so a store never mixes two.
    """
    root = Path(root)
    if shard_id.startswith(".") or "/" in shard_id:
        raise PatchStoreError(f"shard id {shard_id!r} must not start with '.' or contain '/'")
    expected = (len(info.bands), info.patch_size, info.patch_size)
    n = len(patches)
    for role, array in zip(ROLES, (anchor, positive, negative), strict=True):
        if array.shape != (n, *expected):
            raise PatchStoreError(
                f"{role} has shape {array.shape}, expected {(n, *expected)} "
                f"({n} rows in the patch table, bands {list(info.bands)})"
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise PatchStoreError(f"{role} holds NaN or infinite values; fill invalid pixels first")
    (root / "shards").mkdir(parents=True, exist_ok=True)
    store_json = root / "store.json"
    given = info.encoding
    if store_json.exists():
        existing = read_info(root)
        if not existing.same_layout(info):
            raise PatchStoreError(
                f"{root} holds patches with bands {list(existing.bands)}, size "
                f"{existing.patch_size} and normalisation {existing.normalisation!r}; this "
                f"shard has {list(info.bands)}, {info.patch_size} and {info.normalisation!r}. "
                "Use a new store root or re-tile every partition with the same settings."
            )
        info = existing
    else:
        atomic_write_text(store_json, json.dumps(info.to_json(), indent=2))

    final = root / "shards" / shard_id
    with atomic_directory(final) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        for role, array in zip(ROLES, (anchor, positive, negative), strict=True):
            z = group.create_array(
                role,
                shape=array.shape,
                dtype=info.dtype,
                chunks=(1, *expected),
                shards=(max(1, min(TRIPLETS_PER_SHARD_FILE, n)), *expected),
                compressors=CODECS[info.codec](),
                # Patches are never all fill value: skip zarr's per-chunk check, which cost
                # more than compressing the chunk (docs/benchmarks.md).
                config={"write_empty_chunks": True},
            )
            if n:
                z[:] = _stored(array, given, info.encoding, role)
        patches.to_csv(tmp / "patches.csv", index=False)
    return final


def _stored(array: np.ndarray, given: Encoding, store: Encoding, role: str) -> np.ndarray:
    """``array`` in the ``store``'s encoding: float values are encoded; integers already stored
    in the ``given`` encoding pass through, or are re-encoded when the store keeps another."""
    if array.dtype.kind == "f":
        return store.encode(array, role)
    if given.is_float or array.dtype != np.dtype(given.dtype):
        raise PatchStoreError(
            f"{role} is {array.dtype}, neither float values nor the {given.dtype} integers of "
            "this shard's encoding"
        )
    return array if given == store else store.encode(given.decode(array), role)


def read_shard(
    root: str | Path, shard_id: str, triplets: slice | list[int] = slice(None)
) -> dict[str, np.ndarray]:
    """The ``triplets`` (all by default) of one shard, each role decoded to float32."""
    encoding = read_info(root).encoding
    group = zarr.open_group(Path(root) / "shards" / shard_id, mode="r")
    return {role: encoding.decode(group[role][triplets]) for role in ROLES}


def shard_ids(root: str | Path) -> list[str]:
    """The complete shards of a store, sorted (temporary and trashed shards are skipped)."""
    shards = Path(root) / "shards"
    if not shards.is_dir():
        return []
    return sorted(p.name for p in shards.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_patches(root: str | Path) -> pd.DataFrame:
    """The patch table of every shard, with a ``shard`` and a ``index_in_shard`` column."""
    tables = []
    for shard in shard_ids(root):
        table = pd.read_csv(Path(root) / "shards" / shard / "patches.csv")
        table.insert(0, "index_in_shard", np.arange(len(table)))
        table.insert(0, "shard", shard)
        tables.append(table)
    # Empty shards (an all-cloudy partition's) add no rows, and pandas will stop letting their
    # all-NA columns vote on the dtypes; leave them out unless every shard is empty.
    rows = [table for table in tables if len(table)] or tables[:1]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


class TripletDataset(Dataset):
    """Anchor / positive / negative patches of a store, decoded to float32 tensors (C, S, S).

    ``bands`` selects and orders bands by name; a band the store lacks is an error naming both
    lists. Shards are opened lazily in each DataLoader worker.
    """

    def __init__(self, root: str | Path, bands: list[str] | None = None) -> None:
        self.root = Path(root)
        self.info = read_info(self.root)
        wanted = list(bands) if bands is not None else list(self.info.bands)
        missing = [b for b in wanted if b not in self.info.bands]
        if missing:
            raise PatchStoreError(
                f"the model wants bands {wanted} but the store at {self.root} holds "
                f"{list(self.info.bands)} (missing {missing}); re-tile with these bands or change "
                "the model config's `bands`."
            )
        self.band_index = [self.info.bands.index(b) for b in wanted]
        self.patches = read_patches(self.root)
        if self.patches.empty:
            raise PatchStoreError(f"the patch store at {self.root} has no patches")
        self._index = self.patches[["shard", "index_in_shard"]].to_numpy()
        self._encoding = self.info.encoding
        self._arrays: dict[str, dict[str, zarr.Array]] = {}

    def __len__(self) -> int:
        return len(self._index)

    def _shard_arrays(self, shard: str) -> dict[str, zarr.Array]:
        """The role arrays of ``shard``, opened once per process: opening one reads its
        metadata from disk, which cost as much as reading the patch."""
        if shard not in self._arrays:
            group = zarr.open_group(self.root / "shards" / shard, mode="r")
            self._arrays[shard] = {role: group[role] for role in ROLES}
        return self._arrays[shard]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        shard, j = self._index[i]
        arrays = self._shard_arrays(shard)
        return {
            role: torch.from_numpy(
                np.ascontiguousarray(self._encoding.decode(arrays[role][int(j)][self.band_index]))
            )
            for role in ROLES
        }
