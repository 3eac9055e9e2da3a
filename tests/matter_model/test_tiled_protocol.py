"""The authors' tiled OSCD protocol (``matter_model/tiled_protocol.py``): each step against a
naive reference, the whole protocol against a naive re-implementation, and the command line
(``--protocol authors``) on a tiny release in the official layout (``oscd_fixtures.py``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from matter_model.change_detection import ChangePair, model_features, otsu_threshold
from matter_model.checkpoint import build_model
from matter_model.evaluate import evaluate, main
from matter_model.tiled_protocol import (
    TiledProtocol,
    batch_thresholds,
    blur_tiles,
    choose_tiles,
    evaluate_tiled,
    gaussian_kernel,
    gaussian_sigma,
    standardise_tiles,
    tile_bands,
    tile_grid,
    tile_starts,
)
from matter_model.train import load_config
from tests.matter_model.tiny_model import TINY_MODEL

# --- naive references -------------------------------------------------------------------------


def naive_starts(length: int, tile: int, keepbound: bool) -> list[int]:
    """kwarray's ``_slices1d`` walk: step by ``tile``; with ``keepbound`` a window that would
    pass the end is moved back to end there. Windows longer than the side are not kept."""
    starts, pos = [], 0
    while pos + tile <= length:
        starts.append(pos)
        if pos + tile == length:
            break
        pos += tile
        if pos + tile > length:
            if keepbound:
                pos = length - tile
            else:
                break
    return starts


def naive_blur(maps: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """torchvision's gaussian_blur, pixel by pixel: reflect-padded 2-D correlation."""
    half = (kernel_size - 1) / 2
    x = np.array([-half + i for i in range(kernel_size)])
    k1 = np.exp(-0.5 * (x / sigma) ** 2)
    k1 /= k1.sum()
    k2 = np.outer(k1, k1)
    r = kernel_size // 2

    def reflect(i: int, n: int) -> int:
        if i < 0:
            return -i
        if i >= n:
            return 2 * (n - 1) - i
        return i

    n, h, w = maps.shape
    out = np.zeros((n, h, w))
    for t in range(n):
        for i in range(h):
            for j in range(w):
                for u in range(kernel_size):
                    for v in range(kernel_size):
                        yy, xx = reflect(i + u - r, h), reflect(j + v - r, w)
                        out[t, i, j] += k2[u, v] * maps[t, yy, xx]
    return out


def naive_standardise(tile: np.ndarray) -> np.ndarray:
    """One tile ``(C, T, T)``, band by band: (x - mean) / std, std with ddof=1."""
    out = np.empty(tile.shape)
    for c in range(tile.shape[0]):
        band = tile[c].astype(np.float64)
        std = np.std(band, ddof=1)
        out[c] = (band - band.mean()) / (std if std > 0 else 1.0)
    return out


def pair_with(name: str, shape: tuple[int, int], seed: int, bands: int = 3) -> ChangePair:
    """Two noisy dates with a brighter block at date 2 inside the changed block."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image_1 = rng.normal(0.2, 0.02, (bands, h, w)).astype(np.float32)
    image_2 = image_1 + rng.normal(0.0, 0.02, (bands, h, w)).astype(np.float32)
    truth = np.zeros(shape, dtype=bool)
    truth[3:11, 20:29] = True
    image_2[:, truth] += 0.3
    return ChangePair(name, image_1, image_2, truth, np.ones(shape, dtype=bool))


# --- steps ------------------------------------------------------------------------------------


def test_gaussian_kernel_is_torchvisions() -> None:
    assert gaussian_sigma(13) == pytest.approx(2.3)
    assert gaussian_sigma(5) == pytest.approx(0.3 * ((5 - 1) * 0.5 - 1) + 0.8)
    k = gaussian_kernel(13, 2.3)
    x = torch.linspace(-6.0, 6.0, steps=13, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / 2.3).pow(2))
    np.testing.assert_allclose(k, (pdf / pdf.sum()).numpy(), rtol=1e-12)
    assert k.sum() == pytest.approx(1.0) and np.allclose(k, k[::-1])
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(12, 2.0)


@pytest.mark.parametrize("kernel_size", [5, 13])
def test_blur_matches_a_naive_loop_per_tile(kernel_size: int) -> None:
    maps = np.random.default_rng(kernel_size).random((3, 16, 19))
    sigma = gaussian_sigma(kernel_size)
    got = blur_tiles(maps, kernel_size)
    np.testing.assert_allclose(got, naive_blur(maps, kernel_size, sigma), rtol=1e-10, atol=1e-12)
    # scipy's "mirror" is the same reflection; truncating at the radius keeps the same taps.
    r = kernel_size // 2
    for t in range(3):
        ref = ndimage.gaussian_filter(maps[t], sigma, mode="mirror", truncate=r / sigma)
        np.testing.assert_allclose(got[t], ref, rtol=1e-10)
        np.testing.assert_allclose(blur_tiles(maps[t : t + 1], kernel_size)[0], got[t])
    with pytest.raises(ValueError, match="reflect padding"):
        blur_tiles(maps[:, :6, :6], 13)


@pytest.mark.parametrize("length", [7, 16, 32, 40, 47, 48, 100])
@pytest.mark.parametrize("tile", [8, 16])
def test_tile_starts_follow_the_sample_grid(length: int, tile: int) -> None:
    assert tile_starts(length, tile, "shift") == naive_starts(length, tile, keepbound=True)
    assert tile_starts(length, tile, "drop") == naive_starts(length, tile, keepbound=False)
    assert tile_starts(40, 16, "shift") == [0, 16, 24] and tile_starts(40, 16, "drop") == [0, 16]


def test_tile_grid_is_row_by_row() -> None:
    assert tile_grid((40, 48), 16, "shift") == [(y, x) for y in (0, 16, 24) for x in (0, 16, 32)]
    assert tile_grid((40, 48), 16, "drop") == [(y, x) for y in (0, 16) for x in (0, 16, 32)]
    assert tile_grid((10, 48), 16) == []


def test_choose_tiles_keeps_valid_tiles_and_those_with_change() -> None:
    pair = pair_with("p", (40, 48), 0)
    valid = np.ones((40, 48), dtype=bool)
    valid[39, 47] = False  # spoils the bottom-right tile only
    image_2 = pair.image_2.copy()
    image_2[1, 25, 2] = np.nan  # spoils (16, 0) and, through the overlap, (24, 0)
    pair = ChangePair("p", pair.image_1, image_2, pair.truth, valid)
    for tiles in ("all", "change"):
        cut = choose_tiles(pair, TiledProtocol(tile=16, tiles=tiles))
        expected = [
            (y, x)
            for y in (0, 16, 24)
            for x in (0, 16, 32)
            if valid[y : y + 16, x : x + 16].all()
            and np.isfinite(image_2[:, y : y + 16, x : x + 16]).all()
            and (tiles == "all" or pair.truth[y : y + 16, x : x + 16].any())
        ]
        assert cut.corners == expected
        assert cut.grid == 9 and cut.invalid == 3
        for n, (y, x) in enumerate(expected):
            np.testing.assert_array_equal(cut.truth[n], pair.truth[y : y + 16, x : x + 16])
            ref = naive_standardise(pair.image_1[:, y : y + 16, x : x + 16])
            np.testing.assert_allclose(cut.tiles_1[n], ref, rtol=1e-5, atol=1e-5)
    # the change block (rows 3-10, columns 20-28) lies in the tile (0, 16) alone
    assert choose_tiles(pair, TiledProtocol(tile=16, tiles="change")).corners == [(0, 16)]


def test_standardise_tiles_is_the_authors_stad_image() -> None:
    tiles = np.random.default_rng(1).normal(3.0, 2.0, (4, 3, 8, 8)).astype(np.float32)
    tiles[2, 1] = 5.0  # a flat band is only centred
    got = standardise_tiles(tiles)
    for n in range(4):
        np.testing.assert_allclose(got[n], naive_standardise(tiles[n]), rtol=1e-5, atol=1e-6)
    assert (got[2, 1] == 0).all()
    # utils.stad_image: per (tile, band) mean and torch.var (unbiased), on non-flat tiles
    t = torch.from_numpy(tiles[[0, 1, 3]]).double().reshape(3, 3, 64)
    centred = t - t.mean(dim=2, keepdim=True)
    authors = (centred / torch.sqrt(torch.var(centred, dim=2, keepdim=True))).reshape(3, 3, 8, 8)
    np.testing.assert_allclose(got[[0, 1, 3]], authors.numpy(), rtol=1e-5, atol=1e-6)


def test_otsu_per_batch_drops_the_last_incomplete_batch() -> None:
    distances = np.random.default_rng(2).gamma(2.0, 1.0, (7, 4, 4))
    got = batch_thresholds(distances, batch=3)
    assert got == [otsu_threshold(distances[0:3]), otsu_threshold(distances[3:6])]
    assert batch_thresholds(distances, batch=8) == []
    assert len(batch_thresholds(distances, batch=1)) == 7


def test_model_features_on_a_batch_of_tiles_equals_each_tile_alone() -> None:
    config = load_config(None, model=TINY_MODEL, bands=["B02", "B03", "B04"])
    torch.manual_seed(0)
    model = build_model(config).eval()
    tiles = np.random.default_rng(3).normal(size=(5, 3, 16, 16)).astype(np.float32)
    extract = model_features(model, window=5, output="residual")
    batch = extract(tiles)
    assert batch.shape[0] == 5 and batch.shape[2:] == (16, 16)
    for n in range(5):
        np.testing.assert_allclose(batch[n], extract(tiles[n]), rtol=1e-4, atol=1e-5)


# --- the whole protocol -----------------------------------------------------------------------


def naive_protocol(pairs: list[ChangePair], extractor, tile: int, batch: int, tiles: str) -> dict:
    """Every step written out: the stream of chosen tiles over all pairs, per-tile
    standardisation, distance, blur, Otsu per batch, counts per pair (drop_last)."""
    stream = []
    for pair in pairs:
        h, w = pair.truth.shape
        for y in naive_starts(h, tile, True):
            for x in naive_starts(w, tile, True):
                sl = (slice(y, y + tile), slice(x, x + tile))
                truth = pair.truth[sl]
                if tiles == "change" and not truth.any():
                    continue
                f1 = extractor(naive_standardise(pair.image_1[(slice(None), *sl)])[None])[0]
                f2 = extractor(naive_standardise(pair.image_2[(slice(None), *sl)])[None])[0]
                d = np.sqrt(((f1 - f2) ** 2).sum(axis=0))
                stream.append((pair.name, naive_blur(d[None], 13, 2.3)[0], truth))
    counts = {p.name: {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "tiles": 0} for p in pairs}
    thresholds = []
    for a in range(0, len(stream) - batch + 1, batch):
        chunk = stream[a : a + batch]
        threshold = otsu_threshold(np.stack([d for _, d, _ in chunk]))
        thresholds.append(threshold)
        for name, d, truth in chunk:
            pred = d > threshold
            c = counts[name]
            c["tp"] += int((pred & truth).sum())
            c["fp"] += int((pred & ~truth).sum())
            c["fn"] += int((~pred & truth).sum())
            c["tn"] += int((~pred & ~truth).sum())
            c["tiles"] += 1
    return {"counts": counts, "thresholds": thresholds, "dropped": len(stream) % batch}


@pytest.mark.parametrize("tiles", ["all", "change"])
def test_evaluate_tiled_matches_a_naive_protocol(tiles: str) -> None:
    pairs = [pair_with("a", (40, 48), 4), pair_with("b", (36, 33), 5), pair_with("c", (16, 16), 6)]
    pairs[2].truth[:] = False  # no change: no tile under "change", all-negative under "all"

    def squares(x: np.ndarray) -> np.ndarray:  # a nonlinear feature, to tell features apart
        return np.concatenate([x, x**2], axis=1)

    methods = {"cva": tile_bands, "squares": squares}
    batch = 4 if tiles == "all" else 2
    protocol = TiledProtocol(tile=16, tiles=tiles, otsu_batch=batch)
    got = evaluate_tiled(pairs, methods, protocol, chunk=3)
    for method, extractor in methods.items():
        ref = naive_protocol(pairs, extractor, 16, batch, tiles)
        result = got[method]
        np.testing.assert_allclose(result["thresholds"], ref["thresholds"], rtol=1e-5)
        assert result["tiles_dropped_last_batch"] == ref["dropped"]
        for name, c in ref["counts"].items():
            mine = result["per_pair"][name]
            assert {k: mine[k] for k in c} == c, (method, name)
            assert mine["pixels"] == 256 * c["tiles"]
        micro = result["micro"]
        for k in ("tp", "fp", "fn", "tn", "tiles"):
            assert micro[k] == sum(c[k] for c in ref["counts"].values())
        assert micro["pixels"] == micro["tp"] + micro["fp"] + micro["fn"] + micro["tn"]
        assert micro["batches"] == len(ref["thresholds"])
        tp, fp, fn = micro["tp"], micro["fp"], micro["fn"]
        assert micro["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # batches cross pairs: "a" has 9 tiles under "all", so a batch holds tiles of "a" and "b"
    if tiles == "all":
        assert got["cva"]["per_pair"]["a"]["tiles"] == 9
        assert got["cva"]["tile_counts"] == {"grid": 9 + 9 + 1, "invalid": 0, "chosen": 19}
        assert got["cva"]["per_pair"]["c"]["auc"] is None  # one class only
    else:
        # "a": (0, 16); "b" (36 x 33, columns 0, 16, 17): (0, 16) and (0, 17); one batch of 2
        assert got["cva"]["tile_counts"]["chosen"] == 3
        assert [got["cva"]["per_pair"][p]["tiles"] for p in "abc"] == [1, 1, 0]
    # the planted change is bright in every band: CVA on standardised tiles finds it
    assert got["cva"]["per_pair"]["a"]["recall"] > 0.8


def test_protocol_settings_are_checked_and_recorded() -> None:
    settings = TiledProtocol().settings()
    assert settings["tile_size"] == 32 and settings["otsu_batch"] == 32
    assert settings["blur_kernel"] == 13 and settings["blur_sigma"] == pytest.approx(2.3)
    assert settings["tiles"] == "change" and settings["drop_last"] is True
    assert settings["edge_tiles"] == "shift" and settings["invalid_tiles"] == "skipped"
    with pytest.raises(ValueError, match="unknown tiles"):
        TiledProtocol(tiles="some")
    with pytest.raises(ValueError, match="too small"):
        TiledProtocol(tile=6)
    with pytest.raises(ValueError, match="at least one tile"):
        TiledProtocol(otsu_batch=0)


# --- the command line -------------------------------------------------------------------------


def _argv(release: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return [
        "oscd",
        "--root",
        str(release),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--window",
        "5",
        *extra,
    ]


def test_cli_authors_protocol_on_change_tiles(
    release: Path, checkpoint: Path, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="matter_model")
    out = tmp_path / "metrics.json"
    argv = _argv(release, checkpoint, out, "--protocol", "authors", "--tiles", "change")
    returned = evaluate([*argv, "--tile-size", "16", "--otsu-batch", "4"])
    metrics = json.loads(out.read_text())
    assert metrics == json.loads(json.dumps(returned))
    assert metrics["protocol"] == "authors" and "sigma" not in metrics
    settings = metrics["protocol_settings"]
    assert settings["tile_size"] == 16 and settings["otsu_batch"] == 4
    assert settings["tiles"] == "change" and settings["drop_last"] is True
    assert settings["blur_kernel"] == 13 and settings["blur_sigma"] == pytest.approx(2.3)
    # Each 40 x 48 city: tiles at rows 0, 16, 24 and columns 0, 16, 32; the change block of
    # city k (rows 6+4k .. 17+4k, columns 8+3k .. 21+3k) reaches 2 x 2 of them for alpha and
    # beta, 3 x 2 for gamma (rows 14-25): 14 tiles in all, 3 batches of 4, 2 tiles dropped.
    labelled = ["alpha", "beta", "gamma"]
    for method in ("matter", "untrained", "cva"):
        result = metrics[method]
        assert sorted(result["per_city"]) == labelled
        assert result["tile_counts"] == {"grid": 27, "invalid": 0, "chosen": 14}
        micro = result["micro"]
        assert micro["tiles"] == 12 and micro["batches"] == 3 and len(result["thresholds"]) == 3
        assert result["tiles_dropped_last_batch"] == 2
        assert micro["pixels"] == 12 * 16 * 16
        assert micro["pixels"] == sum(micro[k] for k in ("tp", "fp", "fn", "tn"))
        cities = result["per_city"].values()
        assert [c["tiles"] for c in result["per_city"].values()] == [4, 4, 4]
        for k in ("tp", "fp", "fn", "tn", "pixels"):
            assert micro[k] == sum(c[k] for c in cities)
        assert all(0.0 <= c["auc"] <= 1.0 for c in cities)
        assert result["macro"]["auc"] == pytest.approx(np.mean([c["auc"] for c in cities]))
    # The planted change is bright in every band; a 16 px tile blurred at sigma 2.3 spreads it.
    assert metrics["cva"]["micro"]["f1"] > 0.6 and metrics["cva"]["macro"]["auc"] > 0.85
    said = caplog.text
    assert "protocol authors (change tiles of 16 px, Otsu per 4 tiles: 12 tiles" in said


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--tiles", "all"], "--tiles: not an option of --protocol city"),
        (["--protocol", "authors", "--sigma", "2"], "--sigma: not an option of --protocol authors"),
        (["--protocol", "authors", "--maps", "m"], "--maps: not an option of --protocol authors"),
        (["--protocol", "authors", "--tile-size", "4"], "too small"),
    ],
)
def test_cli_options_of_the_other_protocol_are_errors(
    release: Path, checkpoint: Path, tmp_path: Path, capsys, extra: list[str], named: str
) -> None:
    out = tmp_path / "m.json"
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(release, checkpoint, out, *extra))
    assert exit_info.value.code == 1
    assert named in capsys.readouterr().err and not out.exists()
