"""The sub-patch InfoNCE loss: positions, gathering, and the loss against a naive loop."""

import torch

from matter_model.loss import gather, sample_positions, subpatch_info_nce


def test_gather_and_positions():
    g = torch.Generator().manual_seed(0)
    pos = sample_positions(3, 50, 32, 7, g)
    assert pos.shape == (3, 50, 2) and pos.min() >= 3 and pos.max() <= 28
    emb = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    picked = gather(emb, torch.tensor([[[1, 2]], [[3, 4]]]))
    torch.testing.assert_close(picked[0, 0], emb[0, :, 1, 2])
    torch.testing.assert_close(picked[1, 0], emb[1, :, 3, 4])


def naive_info_nce(anchor, positive, negative, pos, neg_pos, temperature, subpatch):
    """The loss one anchor sub-patch at a time, candidates listed by hand."""
    b, p = pos.shape[:2]
    losses = []
    for i in range(b):
        for k in range(p):
            za = anchor[i, :, pos[i, k, 0], pos[i, k, 1]]
            target = positive[i, :, pos[i, k, 0], pos[i, k, 1]]
            others = []
            for j in range(b):
                for m in range(p):
                    apart = (pos[i, k] - pos[j, m]).abs().max()
                    if (j, m) != (i, k) and (j != i or apart >= subpatch):
                        others.append(positive[j, :, pos[j, m, 0], pos[j, m, 1]])
                    others.append(negative[j, :, neg_pos[j, m, 0], neg_pos[j, m, 1]])
            logits = torch.stack([za @ target] + [za @ o for o in others]) / temperature
            losses.append(-torch.log_softmax(logits, 0)[0])
    return torch.stack(losses).mean()


def _unit(g, *shape):
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=1)


def test_loss_matches_a_naive_reference():
    g = torch.Generator().manual_seed(1)
    b, e, s = 3, 8, 16
    anchor, positive, negative = (_unit(g, b, e, s, s) for _ in range(3))
    pos, neg_pos = sample_positions(b, 6, s, 5, g), sample_positions(b, 6, s, 5, g)
    got = subpatch_info_nce(anchor, positive, negative, pos, neg_pos, 0.2, 5)
    want = naive_info_nce(anchor, positive, negative, pos, neg_pos, 0.2, 5)
    torch.testing.assert_close(got, want)


def test_loss_is_low_when_positives_match_and_own_crop_ground_counts_as_negative():
    g = torch.Generator().manual_seed(0)
    b, e, s = 4, 16, 10
    anchor, negative = _unit(g, b, e, s, s), _unit(g, b, e, s, s)
    pos = sample_positions(b, 5, s, 3, g)
    neg_pos = sample_positions(b, 5, s, 3, g)
    matched = subpatch_info_nce(anchor, anchor, negative, pos, neg_pos, 0.1, 3)
    shuffled = subpatch_info_nce(anchor, anchor.roll(1, 0), negative, pos, neg_pos, 0.1, 3)
    assert matched < 0.1 < shuffled
    # A crop whose embedding is the same everywhere cannot tell its own sub-patches apart: where
    # they do not overlap they are negatives, so the loss stays high; where they all overlap
    # (sub-patches as large as the crop) none is a negative and the loss is near zero.
    flat = _unit(g, b, e, 1, 1).expand(b, e, s, s)
    assert subpatch_info_nce(flat, flat, negative, pos, neg_pos, 0.05, 3) > 0.5
    assert subpatch_info_nce(flat, flat, negative, pos, neg_pos, 0.05, s) < 0.2
