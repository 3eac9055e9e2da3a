"""Unsupervised change detection: Otsu, counts, CVA, model features, evaluation, rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from matter_model.change_detection import (
    MODEL_OUTPUTS,
    ChangePair,
    cva_features,
    detect_changes,
    model_features,
    otsu_threshold,
)
from matter_model.change_evaluation import compare_with_baselines, evaluate_pairs
from matter_model.checkpoint import build_model
from matter_model.metrics import ConfusionCounts
from matter_model.rendering import render_change_map
from matter_model.train import load_config
from tests.conftest import REAL_DATA

REAL_ROOT = REAL_DATA / "oscd"


def _between_class_variance(values: np.ndarray, upper: np.ndarray) -> float:
    n1 = upper.sum()
    n0 = values.size - n1
    if n0 == 0 or n1 == 0:
        return 0.0
    return n0 * n1 * (values[~upper].mean() - values[upper].mean()) ** 2


def test_otsu_matches_brute_force_on_integers() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(60, 15, 3000), rng.normal(170, 25, 1000)])
    values = np.clip(np.round(values), 0, 255)
    values[:2] = (0, 255)  # one histogram bin per integer
    best = max(np.unique(values), key=lambda t: _between_class_variance(values, values > t))
    threshold = otsu_threshold(values, bins=256)
    np.testing.assert_array_equal(values > threshold, values > best)


def test_otsu_close_to_brute_force_on_continuous_values() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.gamma(2.0, 0.5, 5000), rng.normal(6, 1, 800)])
    edges = np.linspace(values.min(), values.max(), 257)
    best = max(edges[1:-1], key=lambda t: _between_class_variance(values, values > t))
    assert abs(otsu_threshold(values) - best) <= 2 * (edges[1] - edges[0])


def test_otsu_ignores_non_finite_and_handles_constant() -> None:
    assert otsu_threshold(np.array([3.0, 3.0, np.nan])) == 3.0
    with pytest.raises(ValueError, match="empty"):
        otsu_threshold(np.array([np.nan]))


def _synthetic_pair(name: str, seed: int, gain: float = 1.3) -> ChangePair:
    """Smooth textured scene; date 2 = gain x date 1 + noise, with a 16 x 16 square changed."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.05, 0.3, (4, 1, 1)) + 0.02 * rng.standard_normal((4, 64, 64))
    image_1 = base.astype(np.float32)
    image_2 = (gain * base + 0.002 * rng.standard_normal(base.shape)).astype(np.float32)
    truth = np.zeros((64, 64), dtype=bool)
    truth[20:36, 30:46] = True
    image_2[:, truth] = rng.uniform(0.4, 0.6, (4, 1))
    return ChangePair(name, image_1, image_2, truth)


def test_cva_finds_a_planted_square_despite_illumination_gain() -> None:
    result = detect_changes(_synthetic_pair("square", 0), cva_features, sigma=1.0)
    assert result.counts.f1 > 0.8
    assert result.prediction.shape == (64, 64) and np.isfinite(result.threshold)


def test_micro_is_the_sum_of_per_pair_counts() -> None:
    pairs = [_synthetic_pair(f"p{i}", i, gain=1.0 + 0.1 * i) for i in range(3)]
    valid = np.ones((64, 64), dtype=bool)
    valid[:8] = False
    pairs.append(ChangePair("masked", pairs[0].image_1, pairs[0].image_2, pairs[0].truth, valid))
    seen: list[tuple[str, str]] = []
    report = evaluate_pairs(
        iter(pairs),
        {"cva": cva_features, "raw": lambda x: x},
        on_result=lambda m, p, r: seen.append((m, p.name)),
    )
    assert len(seen) == 8
    for method in ("cva", "raw"):
        per_pair = report[method]["per_pair"]
        assert list(per_pair) == ["p0", "p1", "p2", "masked"]
        total = sum(
            (ConfusionCounts(r["tp"], r["fp"], r["fn"], r["tn"]) for r in per_pair.values()),
            ConfusionCounts(),
        )
        assert report[method]["micro"] == total.as_dict()
        assert (
            per_pair["masked"]["tp"]
            + per_pair["masked"]["fp"]
            + per_pair["masked"]["fn"]
            + per_pair["masked"]["tn"]
            == valid.sum()
        )


class _ToyEmbedder(torch.nn.Module):
    """Per-pixel embedding: L2-normalised mean of the window (a stand-in for MATTER)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def embed(self, x: torch.Tensor, window: int) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        assert not torch.is_grad_enabled()
        pooled = torch.nn.functional.avg_pool2d(
            x, window, stride=1, padding=window // 2, count_include_pad=False
        )
        return torch.nn.functional.normalize(torch.cat([pooled, torch.ones_like(x[:, :1])], 1))


def test_model_features_tiled_equals_whole_image() -> None:
    image = np.random.default_rng(3).normal(0, 1, (3, 70, 90)).astype(np.float32)
    model = _ToyEmbedder()
    whole = model_features(model, window=5, tile=1024)(image)
    tiled = model_features(model, window=5, tile=32, margin=4)(image)
    assert whole.shape == (4, 70, 90) and whole.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert len(model.calls) == 1 + 3 * 3
    assert max(c[2] for c in model.calls[1:]) <= 32 + 2 * 4
    np.testing.assert_allclose(np.linalg.norm(whole, axis=0), 1.0, atol=1e-5)


def _tiny_matter() -> tuple[torch.nn.Module, dict]:
    config = load_config(
        None, model={"width": 8, "blocks": [1], "tern_layers": 1, "codewords": 4, "embed_dim": 8}
    )
    torch.manual_seed(0)
    return build_model(config).eval(), config


def test_model_outputs_residuals_or_embeddings_tiled_as_whole() -> None:
    model, _ = _tiny_matter()
    image = np.random.default_rng(4).normal(0, 1, (9, 40, 50)).astype(np.float32)
    with torch.no_grad():
        want = model.surface_residuals(torch.from_numpy(image)[None], 5)[0].numpy()
    residuals = model_features(model, window=5, tile=16, margin=30, output="residual")(image)
    np.testing.assert_allclose(residuals, want, atol=1e-5)
    embeddings = model_features(model, window=5, output="embedding")(image)
    assert embeddings.shape == (8, 40, 50)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=0), 1.0, atol=1e-5)
    # the residuals keep a length of their own: no unit sphere
    assert np.ptp(np.linalg.norm(residuals, axis=0)) > 0.1
    with pytest.raises(ValueError, match="unknown model output 'pooled'"):
        model_features(model, output="pooled")


def test_render_change_map_writes_png(tmp_path: Path) -> None:
    pair = _synthetic_pair("square", 0)
    result = detect_changes(pair, cva_features)
    out = tmp_path / "maps" / "square.png"
    data = render_change_map(pair, result.prediction, path=out)
    assert data.startswith(b"\x89PNG") and out.read_bytes() == data
    assert [p.name for p in out.parent.iterdir()] == ["square.png"]


@pytest.mark.skipif(
    not REAL_ROOT.is_dir(), reason=f"real OSCD data not found at {REAL_ROOT} (set MATTER_REAL_DATA)"
)
def test_cva_on_one_real_oscd_city() -> None:
    from matter_model.datasets.oscd import OSCD

    report = evaluate_pairs(OSCD(REAL_ROOT).iter_pairs(["nantes"]), {"cva": cva_features})
    city = report["cva"]["per_pair"]["nantes"]
    assert 0 < city["f1"] <= 1 and np.isfinite(city["threshold"])
    assert report["cva"]["micro"]["f1"] == city["f1"]


def test_compare_with_baselines_runs_three_methods_and_writes_previews(tmp_path: Path) -> None:
    model, config = _tiny_matter()
    pair = _synthetic_pair("square", seed=3)
    nine = np.arange(9) % 4  # the model's 9 bands from the pair's 4
    pair = ChangePair(pair.name, pair.image_1[nine], pair.image_2[nine], pair.truth, pair.valid)
    results = compare_with_baselines(
        model, config, {"synthetic": [pair]}, window=5, previews=tmp_path
    )
    assert set(results["synthetic"]) == {"matter", "untrained", "cva"}
    assert results["synthetic"]["cva"]["micro"]["f1"] > 0.8
    assert (tmp_path / "square.png").read_bytes().startswith(b"\x89PNG")
    # the output asked for reaches both networks: the same figures as each extractor run alone
    torch.manual_seed(config["seed"])
    untrained = build_model(config).eval()
    for output in MODEL_OUTPUTS:
        got = compare_with_baselines(model, config, {"synthetic": [pair]}, 5, output=output)
        alone = evaluate_pairs(
            [pair],
            {
                "matter": model_features(model, 5, output=output),
                "untrained": model_features(untrained, 5, output=output),
            },
        )
        for name in alone:
            assert got["synthetic"][name] == alone[name]
