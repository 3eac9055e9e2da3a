"""The MATTER model, its registry and the sub-patch InfoNCE loss."""

import pytest
import torch

from matter_model.loss import gather, sample_positions, subpatch_info_nce
from matter_model.matter import DEFAULT_BANDS, MODELS, Matter, create_model

TINY = dict(width=8, blocks=[1, 1], tern_layers=1, codewords=4, embed_dim=6)


def test_registry_builds_the_model_with_the_authors_bands():
    model = create_model("matter", **TINY)
    assert isinstance(model, Matter) and "matter" in MODELS
    assert model.bands == DEFAULT_BANDS and model.in_channels == 9
    with pytest.raises(ValueError, match="unknown model"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown norm"):
        create_model("matter", norm="nope")


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_embed_is_dense_and_unit_length(norm):
    torch.manual_seed(0)
    model = create_model("matter", bands=["B04", "B08"], norm=norm, **TINY).eval()
    x = torch.rand(2, 2, 20, 17)
    with torch.no_grad():
        emb = model.embed(x, window=13)
    assert emb.shape == (2, 6, 20, 17)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2, 20, 17))
    with pytest.raises(ValueError, match="expects 2 bands"):
        model.embed(torch.rand(1, 3, 8, 8), window=7)


def test_gather_and_positions():
    g = torch.Generator().manual_seed(0)
    pos = sample_positions(3, 50, 32, 7, g)
    assert pos.shape == (3, 50, 2) and pos.min() >= 3 and pos.max() <= 28
    emb = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    picked = gather(emb, torch.tensor([[[1, 2]], [[3, 4]]]))
    torch.testing.assert_close(picked[0, 0], emb[0, :, 1, 2])
    torch.testing.assert_close(picked[1, 0], emb[1, :, 3, 4])


def test_loss_is_low_when_positives_match_and_ignores_own_crop_positives():
    g = torch.Generator().manual_seed(0)
    b, e, s = 4, 16, 10
    anchor = torch.nn.functional.normalize(torch.randn(b, e, s, s, generator=g), dim=1)
    negative = torch.nn.functional.normalize(torch.randn(b, e, s, s, generator=g), dim=1)
    pos = sample_positions(b, 5, s, 3, g)
    neg_pos = sample_positions(b, 5, s, 3, g)
    matched = subpatch_info_nce(anchor, anchor, negative, pos, neg_pos, 0.1)
    shuffled = subpatch_info_nce(anchor, anchor.roll(1, 0), negative, pos, neg_pos, 0.1)
    assert matched < 0.1 < shuffled
    # a positive crop equal to the anchor everywhere: the other sub-patches of the same crop
    # must not count as negatives, so a constant crop embedding gives a near-zero loss
    flat = torch.nn.functional.normalize(torch.randn(b, e, 1, 1, generator=g), dim=1)
    flat = flat.expand(b, e, s, s)
    assert subpatch_info_nce(flat, flat, negative, pos, neg_pos, 0.05) < 0.2
