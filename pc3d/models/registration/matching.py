"""Coarse-to-fine matching: superpoint matching with dual normalisation + top-k, then point matching inside
matched patches from the optimal-transport plan with mutual top-k selection."""
from __future__ import annotations

import torch

from pc3d.ops.point_ops import knn


def superpoint_matching(src_feats: torch.Tensor, ref_feats: torch.Tensor, num_matches: int):
    """Top-k superpoint pairs by dual-normalised similarity.

    Args:
        src_feats `(Ns, d)`, ref_feats `(Nr, d)`: L2-normalised features.
    Returns:
        (src_index `(K,)`, ref_index `(K,)`, scores `(K,)`), best first.
    """
    sim = torch.exp(-torch.cdist(src_feats, ref_feats) ** 2)
    dual = (sim / sim.sum(1, keepdim=True).clamp_min(1e-12)) * (sim / sim.sum(0, keepdim=True).clamp_min(1e-12))
    k = min(int(num_matches), dual.numel())
    scores, flat = torch.topk(dual.flatten(), k)
    return flat // dual.shape[1], flat % dual.shape[1], scores


def build_patches(superpoints: torch.Tensor, points: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Patch of each superpoint: its `patch_size` nearest dense points. Returns `(Ns, K)` int64."""
    return knn(superpoints, points, patch_size)[1]


def mutual_topk_correspondences(log_plan: torch.Tensor, k: int = 2, threshold: float = 0.05):
    """Select `(b, r, c)` entries of the real part of `log_plan (B, M+1, N+1)` that are among the top-k of
    their row and of their column, with probability above `threshold`.

    Returns (batch `(C,)`, row `(C,)`, col `(C,)`, score `(C,)` probabilities).
    """
    probs = log_plan[:, :-1, :-1].exp()
    kr = min(k, probs.shape[2])
    kc = min(k, probs.shape[1])
    row_thr = torch.topk(probs, kr, dim=2).values[:, :, -1:]
    col_thr = torch.topk(probs, kc, dim=1).values[:, -1:, :]
    mask = (probs >= row_thr) & (probs >= col_thr) & (probs > threshold)
    b, r, c = torch.nonzero(mask, as_tuple=True)
    return b, r, c, probs[b, r, c]
