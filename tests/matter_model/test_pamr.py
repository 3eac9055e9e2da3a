"""The PAMR refinement (the authors' TeRN) against a naive per-pixel loop."""

import pytest
import torch

import matter_model.pamr as pamr
from matter_model.pamr import PAMR, affinity, propagate

RING = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def clamped(t: torch.Tensor, y: int, x: int) -> torch.Tensor:
    """``t[..., y, x]`` with the coordinates clamped into the image (replicate padding)."""
    h, w = t.shape[-2:]
    return t[..., min(max(y, 0), h - 1), min(max(x, 0), w - 1)]


def naive_weights(image: torch.Tensor, dilations, y: int, x: int) -> torch.Tensor:
    """The softmax over every dilation's 8 neighbours of one pixel of ``image`` (K, H, W)."""
    taps = [clamped(image, y + dy * d, x + dx * d) for d in dilations for dy, dx in [(0, 0)] + RING]
    sigma = torch.stack(taps).std(0)  # per band, unbiased, over 9 taps a dilation
    logits = [
        (
            -(image[:, y, x] - clamped(image, y + dy * d, x + dx * d)).abs() / (1e-8 + 0.1 * sigma)
        ).mean()
        for d in dilations
        for dy, dx in RING
    ]
    return torch.softmax(torch.stack(logits), 0)


def naive_pamr(features: torch.Tensor, image: torch.Tensor, dilations, iterations: int):
    """One pixel at a time: features replaced ``iterations`` times by the weighted mean of
    their neighbours."""
    b, c, h, w = features.shape
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in RING]
    weights = {
        (bi, y, x): naive_weights(image[bi], dilations, y, x)
        for bi in range(b)
        for y in range(h)
        for x in range(w)
    }
    for _ in range(iterations):
        out = torch.empty_like(features)
        for (bi, y, x), wts in weights.items():
            neighbours = torch.stack([clamped(features[bi], y + dy, x + dx) for dy, dx in offsets])
            out[bi, :, y, x] = (wts[:, None] * neighbours).sum(0)
        features = out
    return features


@pytest.mark.parametrize(
    ("dilations", "iterations"), [((1, 1, 2, 4, 6, 8), 3), ((1, 3), 1), ((2,), 0)]
)
def test_matches_a_naive_per_pixel_loop(dilations, iterations):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 7, 6, generator=g)
    features = torch.randn(2, 4, 7, 6, generator=g)
    got = PAMR(iterations, dilations)(features, image)
    want = naive_pamr(features, image, dilations, iterations)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_weights_are_a_distribution_and_flat_features_stay_flat():
    image = torch.rand(1, 9, 10, 9)
    weights = affinity(image)
    assert weights.shape == (1, 48, 10, 9)
    torch.testing.assert_close(weights.sum(1), torch.ones(1, 10, 9))
    flat = torch.full((1, 5, 10, 9), 0.3)
    torch.testing.assert_close(PAMR()(flat, image), flat)
    assert not list(PAMR().parameters())


def test_refinement_keeps_an_edge_of_the_image():
    image = torch.zeros(1, 3, 12, 12)
    image[..., 6:] = 1.0
    noisy = image[:, :1] + 0.2 * torch.randn(
        1, 1, 12, 12, generator=torch.Generator().manual_seed(1)
    )
    refined = PAMR()(noisy, image)
    assert (refined[..., :6] < 0.35).all() and (refined[..., 6:] > 0.65).all()
    assert refined.std() < noisy.std()


def test_gradient_is_the_adjoint_in_chunks(monkeypatch):
    monkeypatch.setattr(pamr, "CPU_CHUNK_BYTES", 1)  # one sample a chunk
    g = torch.Generator().manual_seed(2)
    image = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64)
    features = torch.randn(2, 1, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weights = affinity(image, (1, 1, 6))
    check = torch.autograd.gradcheck
    assert check(lambda f: propagate(f, weights, (1, 1, 6), 2), (features,), fast_mode=True)
