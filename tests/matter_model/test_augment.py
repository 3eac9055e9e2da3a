import pytest
import torch

from matter_model.augment import PositiveJitter, shift_crops


def _crops() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _naive_shift(crop: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    _, h, w = crop.shape
    out = torch.empty_like(crop)
    for y in range(h):
        for x in range(w):
            out[:, y, x] = crop[:, min(max(y - dy, 0), h - 1), min(max(x - dx, 0), w - 1)]
    return out


def test_shift_crops_matches_a_naive_edge_repeating_shift():
    crops = _crops()
    shifts = torch.tensor([[0, 0], [1, -1], [-2, 2], [2, 0]])
    out = shift_crops(crops, shifts)
    for crop, moved, (dy, dx) in zip(crops, out, shifts.tolist(), strict=True):
        assert torch.equal(moved, _naive_shift(crop, dy, dx))


def test_no_perturbation_returns_the_crops_untouched():
    crops = _crops()
    assert PositiveJitter.from_config(None)(crops, torch.Generator()) is crops
    assert not PositiveJitter().active


def test_gain_and_offset_are_per_crop_and_band():
    crops = _crops()
    out = PositiveJitter(gain=0.2, offset=0.5)(crops, torch.Generator().manual_seed(0))
    # an affine map per (crop, band): out = g * x + o, recovered by least squares
    for i in range(crops.shape[0]):
        for c in range(crops.shape[1]):
            x, y = crops[i, c].ravel(), out[i, c].ravel()
            design = torch.stack([x, torch.ones_like(x)], 1)
            solution = torch.linalg.lstsq(design, y[:, None]).solution
            assert torch.allclose(design @ solution, y[:, None], atol=1e-5)
    assert not torch.allclose(out, crops)


def test_draws_repeat_with_the_generator_seed():
    jitter = PositiveJitter(gain=0.1, offset=0.1, noise=0.05, shift_px=1)
    crops = _crops()
    first = jitter(crops, torch.Generator().manual_seed(7))
    again = jitter(crops, torch.Generator().manual_seed(7))
    other = jitter(crops, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_negative_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="augment.noise"):
        PositiveJitter(noise=-0.1)
