"""TeRN: the adaptive kernel is a distribution over the window and keeps edges sharp."""

import torch
import torch.nn.functional as F

from matter_model.tern import TeRN, TeRNLayer, similarity_kernel


def step_edge(size: int = 12) -> torch.Tensor:
    """Two channels: (1, 0.1) left of the edge, (0.1, 1) right of it."""
    x = torch.empty(1, 2, size, size)
    x[:, 0, :, : size // 2], x[:, 1, :, : size // 2] = 1.0, 0.1
    x[:, 0, :, size // 2 :], x[:, 1, :, size // 2 :] = 0.1, 1.0
    return x


def test_kernel_is_a_distribution_that_ignores_outside_pixels():
    x = torch.randn(2, 4, 6, 5)
    kernel = similarity_kernel(x, 3, eps=0.1)
    assert kernel.shape == (2, 9, 6, 5)
    torch.testing.assert_close(kernel.sum(1), torch.ones(2, 6, 5))
    assert (kernel[:, :3, 0] == 0).all()  # the row above the image
    assert (kernel[:, [0, 3, 6], :, 0] == 0).all()  # the column left of it


def test_adaptive_averaging_keeps_an_edge_that_a_box_blur_smears():
    x = step_edge()
    layer = TeRNLayer(2, kernel_size=3, eps=0.1)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0] = 1.0  # per-channel identity at every offset: adaptive averaging
        layer.weight[1, 1] = 1.0
        layer.bias.zero_()
        refined = layer.refine(x)
    box = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mid = x.shape[-1] // 2
    rows = slice(2, -2)  # away from the top and bottom borders
    jump = (refined[0, 0, rows, mid - 1] - refined[0, 0, rows, mid]).min()
    box_jump = (box[0, 0, rows, mid - 1] - box[0, 0, rows, mid]).max()
    step = x[0, 0, 0, 0] - x[0, 0, 0, -1]
    assert jump > 0.9 * step
    assert box_jump < 0.4 * step
    # far from the edge the adaptive average leaves a flat region unchanged
    torch.testing.assert_close(refined[0, :, rows, 2], x[0, :, rows, 2])


def test_tern_stack_shapes_and_gradients():
    tern = TeRN(channels=4, layers=2, kernel_size=3, eps=0.1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = tern(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in tern.parameters())
