"""The dense residual encoder against a naive per-pixel gather."""

from collections.abc import Callable

import pytest
import torch

from matter_model.residual_encoder import ResidualEncoder


def naive_window_residuals(
    enc: ResidualEncoder, features: torch.Tensor, window: int, bi: int, y: int, x: int
) -> torch.Tensor:
    """The (N, Y, D) soft-assigned residuals of the window around one pixel, cut at the border."""
    r = window // 2
    patch = features[bi, :, max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
    z = patch.reshape(features.shape[1], -1).T  # (N, D)
    dist2 = ((z[:, None, :] - enc.centres[None]) ** 2).sum(-1)  # (N, Y)
    theta = torch.softmax(-enc.smoothing * dist2, dim=1)
    return theta[..., None] * (z[:, None, :] - enc.centres[None])


def per_pixel(
    features: torch.Tensor, dim: int, value: Callable[[int, int, int], torch.Tensor]
) -> torch.Tensor:
    """A (B, dim, H, W) map filled one pixel at a time by ``value(b, y, x)``."""
    b, _, h, w = features.shape
    out = torch.empty(b, dim, h, w, dtype=features.dtype)
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                out[bi, :, y, x] = value(bi, y, x)
    return out


def naive_encode(enc: ResidualEncoder, features: torch.Tensor, window: int) -> torch.Tensor:
    def encode(bi: int, y: int, x: int) -> torch.Tensor:
        e = naive_window_residuals(enc, features, window, bi, y, x).sum(0)  # (Y, D)
        e = e.flatten() / (e.square().sum() + enc.eps).sqrt()
        proj = enc.projection.permute(1, 0, 2).reshape(-1, e.shape[0])  # (E, Y*D)
        return proj @ e + enc.bias

    return per_pixel(features, enc.bias.shape[0], encode)


def naive_residuals(enc: ResidualEncoder, features: torch.Tensor, window: int) -> torch.Tensor:
    def aggregate(bi: int, y: int, x: int) -> torch.Tensor:
        residuals = naive_window_residuals(enc, features, window, bi, y, x)  # (N, Y, D)
        return residuals.sum(1).mean(0)  # over codewords, then the window's pixels

    return per_pixel(features, features.shape[1], aggregate)


def naive_surface_encoding(
    enc: ResidualEncoder, features: torch.Tensor, window: int
) -> torch.Tensor:
    def encode(bi: int, y: int, x: int) -> torch.Tensor:
        residuals = naive_window_residuals(enc, features, window, bi, y, x)  # (N, Y, D)
        per_codeword = residuals.mean(0)  # over the window's pixels: (Y, D)
        return torch.where(per_codeword > 0, per_codeword, -0.2 * per_codeword).mean(0)

    return per_pixel(features, features.shape[1], encode)


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize(
    ("dense", "naive"),
    [
        (ResidualEncoder.forward, naive_encode),
        (ResidualEncoder.residuals, naive_residuals),
        (ResidualEncoder.surface_encoding, naive_surface_encoding),
    ],
    ids=["embedding", "residuals", "surface_encoding"],
)
def test_matches_naive_gather(window, dense, naive):
    torch.manual_seed(0)
    enc = ResidualEncoder(dim=4, codewords=3, embed_dim=5)
    features = torch.randn(2, 4, 6, 7)
    with torch.no_grad():
        got, want = dense(enc, features, window), naive(enc, features, window)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_gradients_match_naive_and_checkpointing():
    torch.manual_seed(1)
    enc = ResidualEncoder(dim=3, codewords=2, embed_dim=4).double()
    features = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(1, 4, 4, 5, dtype=torch.float64)
    params = [features, *enc.parameters()]
    dense = torch.autograd.grad((enc(features, 3) * target).sum(), params)
    naive = torch.autograd.grad((naive_encode(enc, features, 3) * target).sum(), params)
    for got, want in zip(dense, naive, strict=True):
        torch.testing.assert_close(got, want)


def test_rejects_even_window_and_keeps_size():
    enc = ResidualEncoder(dim=2, codewords=2, embed_dim=3)
    x = torch.randn(1, 2, 9, 9)
    assert enc(x, 7).shape == (1, 3, 9, 9)
    with pytest.raises(ValueError, match="odd"):
        enc(x, 4)
    with pytest.raises(ValueError, match="odd"):
        enc.residuals(x, 4)
    with pytest.raises(ValueError, match="odd"):
        enc.surface_encoding(x, 4)
