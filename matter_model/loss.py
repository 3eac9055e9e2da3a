"""InfoNCE over sub-patches of anchor, positive and negative crops."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_positions(
    batch: int, count: int, size: int, subpatch: int, generator: torch.Generator
) -> torch.Tensor:
    """``count`` sub-patch centres (B, P, 2) as (row, col), the whole sub-patch inside the crop."""
    low, high = subpatch // 2, size - subpatch // 2
    if high <= low:
        raise ValueError(f"a {subpatch} px sub-patch does not fit in a {size} px crop")
    return torch.randint(low, high, (batch, count, 2), generator=generator)


def gather(embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Embeddings (B, E, H, W) at ``positions`` (B, P, 2) -> (B, P, E)."""
    b, e, _, w = embeddings.shape
    flat = (positions[..., 0] * w + positions[..., 1]).to(embeddings.device)  # (B, P)
    return embeddings.flatten(2).gather(2, flat[:, None, :].expand(b, e, -1)).transpose(1, 2)


def subpatch_info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    positions: torch.Tensor,
    negative_positions: torch.Tensor,
    temperature: float,
    subpatch: int,
) -> torch.Tensor:
    """InfoNCE of anchor sub-patches against positives, with the batch's other sub-patches.

    ``anchor``, ``positive``, ``negative``: dense L2-normalised embeddings (B, E, H, W).
    ``positions`` (B, P, 2) are shared by anchor and positive (the same place at two dates);
    ``negative_positions`` (B, P, 2) are the negatives' own. Each anchor sub-patch is scored
    against its matched positive sub-patch (the target), every negative-crop sub-patch of the
    batch and every other positive sub-patch that does not overlap it: those of the other crops,
    and those of its own crop at least ``subpatch`` px away in rows or columns, which show other
    ground at the other date. The own-crop negatives make the embedding tell apart neighbouring
    surfaces of one scene, not only scenes, which is what a change map compares. Positive
    sub-patches that overlap the anchor's share pixels with the target and are left out.
    """
    za = gather(anchor, positions).flatten(0, 1).float()  # (N, E), N = B*P
    zp = gather(positive, positions).flatten(0, 1).float()
    zn = gather(negative, negative_positions).flatten(0, 1).float()
    b, p = positions.shape[:2]
    crop = torch.arange(b, device=za.device).repeat_interleave(p)
    centres = positions.flatten(0, 1).to(za.device)
    apart = (centres[:, None, :] - centres[None, :, :]).abs().amax(-1)  # Chebyshev distance
    overlapping = (crop[:, None] == crop[None, :]) & (apart < subpatch)
    matched = torch.eye(b * p, dtype=torch.bool, device=za.device)
    to_positives = (za @ zp.T).masked_fill(overlapping & ~matched, float("-inf"))
    logits = torch.cat([to_positives, za @ zn.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.arange(b * p, device=za.device))
