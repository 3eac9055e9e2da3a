"""pac2d against a naive F.unfold reference, in values and in every gradient."""

import pytest
import torch
import torch.nn.functional as F

from matter_model.ops import neighbour_views, pac2d


def reference_pac(x, kernel, weight, bias, dilation):
    b, c, h, w = x.shape
    k = weight.shape[-1]
    cols = F.unfold(x, k, dilation=dilation, padding=(k // 2) * dilation)  # (B, C*k*k, H*W)
    cols = cols.view(b, c, k * k, h * w) * kernel.view(b, 1, k * k, h * w)
    out = torch.einsum("ock,bckn->bon", weight.reshape(weight.shape[0], c, k * k), cols)
    out = out.view(b, -1, h, w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def make_inputs(k, dtype=torch.float32, b=2, cin=3, cout=4, h=7, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cin, h, w, generator=g, dtype=dtype)
    kernel = torch.rand(b, k * k, h, w, generator=g, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, generator=g, dtype=dtype)
    bias = torch.randn(cout, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, kernel, weight, bias)]


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("dilation", [1, 2])
def test_pac_matches_unfold_reference(k, dilation):
    inputs = make_inputs(k)
    out = pac2d(*inputs, dilation=dilation)
    ref = reference_pac(*inputs, dilation)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_grads = torch.autograd.grad(ref, inputs, grad)
    for name, got, want in zip(("x", "kernel", "weight", "bias"), grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=f"grad_{name}")


def test_pac_without_bias_and_partial_grads():
    x, kernel, weight, _ = make_inputs(3)
    weight = weight.detach()
    out = pac2d(x, kernel, weight)
    ref = reference_pac(x, kernel, weight, None, 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    gx, gk = torch.autograd.grad(out.sum(), (x, kernel))
    rx, rk = torch.autograd.grad(ref.sum(), (x, kernel))
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gk, rk, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("frozen", ["x", "kernel", "weight"])
def test_pac_gradients_when_one_input_is_frozen(frozen):
    """The backward skips the gradients nobody asked for and still gets the others right."""
    names = ("x", "kernel", "weight", "bias")
    inputs = make_inputs(5)
    inputs[names.index(frozen)] = inputs[names.index(frozen)].detach()
    wanted = [t for t in inputs if t.requires_grad]
    out = pac2d(*inputs, dilation=2)
    ref = reference_pac(*inputs, 2)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, wanted, grad)
    want = torch.autograd.grad(ref, wanted, grad)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,dilation", [(3, 1), (3, 2), (5, 1)])
def test_pac_gradcheck_float64(k, dilation):
    inputs = make_inputs(k, dtype=torch.float64, b=1, cin=2, cout=2, h=5, w=4)
    assert torch.autograd.gradcheck(lambda *t: pac2d(*t, dilation=dilation), inputs)


def test_pac_rejects_bad_shapes():
    x, kernel, weight, _ = make_inputs(3)
    with pytest.raises(ValueError, match="kernel has shape"):
        pac2d(x, kernel[:, :4], weight)
    with pytest.raises(ValueError, match="odd square"):
        pac2d(x, torch.ones(2, 16, 7, 6), torch.ones(4, 3, 4, 4))


def test_neighbour_views_are_shifts():
    x = torch.arange(20.0).view(1, 1, 4, 5)
    views = neighbour_views(x, 3, dilation=2)
    assert len(views) == 9
    top_left, centre = views[0], views[4]
    torch.testing.assert_close(centre, x)
    assert top_left[0, 0, 2, 2] == x[0, 0, 0, 0]
    assert top_left[0, 0, 0, 0] == 0


@pytest.mark.parametrize("rows_per_tile", [1, 2, 7])
@pytest.mark.parametrize("dilation", [1, 2])
def test_pac_in_tiles_of_rows_matches_reference(monkeypatch, rows_per_tile, dilation):
    """Tiles of 1, 2 (7 = 3*2 + 1: a short last band) and all 7 rows give the same result."""
    import matter_model.ops.pac as pac_module

    inputs = make_inputs(5, cin=3, cout=4, h=7, w=6)
    x = inputs[0]
    # the backward's tiles hold max(Cin, Cout) * k*k values a pixel, the forward's Cin * k*k
    monkeypatch.setitem(pac_module.TILE_BYTES, "cpu", rows_per_tile * 6 * 4 * 25 * 4)
    bands = list(pac_module._row_bands(7, 6, 4 * 25 * 4, x.device))
    assert bands[0] == (0, rows_per_tile) and sum(rows for _, rows in bands) == 7
    out = pac2d(*inputs, dilation=dilation)
    ref = reference_pac(*inputs, dilation)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    for got, want in zip(
        torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
