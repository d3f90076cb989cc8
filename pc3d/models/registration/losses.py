"""Training losses: overlap-aware circle loss on superpoints and negative log-likelihood on the OT plans.

Ground truth comes from `T_gt` (maps src into ref): superpoint-patch overlaps and mutual-nearest point
matches within `radius` inside each patch pair.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def transform_points(points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    return points @ transform[:3, :3].T + transform[:3, 3]


def patch_overlaps(src_patch_xyz: torch.Tensor, ref_patch_xyz: torch.Tensor, transform: torch.Tensor,
                   radius: float) -> torch.Tensor:
    """Overlap ratio of every (src patch, ref patch) pair under `transform`.

    Args:
        src_patch_xyz `(Ns, P, 3)`, ref_patch_xyz `(Nr, P, 3)`.
    Returns:
        `(Ns, Nr)`: mean of the two directed fractions of patch points with a neighbour in the other patch
        within `radius`.
    """
    ns, p, _ = src_patch_xyz.shape
    nr, q, _ = ref_patch_xyz.shape
    s = transform_points(src_patch_xyz.reshape(-1, 3), transform)
    d = torch.cdist(s, ref_patch_xyz.reshape(-1, 3)).view(ns, p, nr, q)
    close = d < radius
    src_frac = close.any(3).float().mean(1)                 # (Ns, Nr)
    ref_frac = close.any(1).float().mean(2)                 # (Ns, Nr)
    return 0.5 * (src_frac + ref_frac)


def overlap_aware_circle_loss(src_feats: torch.Tensor, ref_feats: torch.Tensor, overlaps: torch.Tensor,
                              positive_overlap: float = 0.1, pos_margin: float = 0.1, neg_margin: float = 1.4,
                              pos_optimal: float = 0.1, neg_optimal: float = 1.4, log_scale: float = 24.0) -> torch.Tensor:
    """Circle loss on L2-normalised superpoint features `(Ns, d)` / `(Nr, d)`; positives (overlap >
    `positive_overlap`) are weighted by sqrt(overlap), negatives have zero overlap. Rows and columns
    without both a positive and a negative are ignored. Returns a scalar (0 if nothing is valid)."""
    dist = torch.cdist(src_feats, ref_feats)
    pos = overlaps > positive_overlap
    neg = overlaps == 0
    pos_scale = torch.sqrt(overlaps.clamp_min(0)) * pos
    big = 1e5
    pos_w = torch.relu((dist - big * (~pos).float()) - pos_optimal).detach() * pos_scale
    neg_w = torch.relu(neg_optimal - (dist + big * (~neg).float())).detach()
    pos_logits = log_scale * (dist - pos_margin) * pos_w
    neg_logits = log_scale * (neg_margin - dist) * neg_w
    # -inf where not a positive / negative so they drop out of logsumexp
    pos_logits = pos_logits.masked_fill(~pos, float("-inf"))
    neg_logits = neg_logits.masked_fill(~neg, float("-inf"))
    losses = []
    for dim in (1, 0):
        valid = pos.any(dim) & neg.any(dim)
        if valid.any():
            term = F.softplus(torch.logsumexp(pos_logits, dim) + torch.logsumexp(neg_logits, dim)) / log_scale
            losses.append(term[valid].mean())
    if not losses:
        return src_feats.sum() * 0.0
    return sum(losses) / len(losses)


def fine_matching_targets(src_patch_xyz: torch.Tensor, ref_patch_xyz: torch.Tensor, transform: torch.Tensor,
                          radius: float) -> torch.Tensor:
    """Ground-truth assignment `(K, P+1, Q+1)` bool for K patch pairs: mutual nearest neighbours within
    `radius`; unmatched src points go to the dustbin column, unmatched ref points to the dustbin row."""
    k, p, _ = src_patch_xyz.shape
    q = ref_patch_xyz.shape[1]
    s = transform_points(src_patch_xyz.reshape(-1, 3), transform).view(k, p, 3)
    d = torch.cdist(s, ref_patch_xyz)
    match = (d < radius) & (d == d.min(2, keepdim=True).values) & (d == d.min(1, keepdim=True).values)
    target = torch.zeros(k, p + 1, q + 1, dtype=torch.bool, device=d.device)
    target[:, :p, :q] = match
    target[:, :p, q] = ~match.any(2)
    target[:, p, :q] = ~match.any(1)
    return target


def optimal_transport_nll(log_plans: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the target entries of the log plans `(K, P+1, Q+1)`."""
    if targets.sum() == 0:
        return log_plans.sum() * 0.0
    return -log_plans[targets].mean()
