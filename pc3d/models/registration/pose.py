"""Pose estimation from correspondences: weighted SVD (Kabsch), local-to-global registration (LGR), RANSAC.

All transforms map source points into the reference frame: `ref ~ src @ R.T + t`.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["weighted_svd", "lgr_hypotheses", "local_to_global_registration", "distinct_poses", "ransac_correspondences",
           "to_homogeneous"]


def to_homogeneous(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """`(..., 3, 3)`, `(..., 3)` -> `(..., 4, 4)`."""
    out = torch.zeros(rotation.shape[:-2] + (4, 4), dtype=rotation.dtype, device=rotation.device)
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1
    return out


def weighted_svd(src: torch.Tensor, ref: torch.Tensor, weights: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Weighted Kabsch: the rigid transform minimising `sum_i w_i |R src_i + t - ref_i|^2`.

    Args:
        src, ref: `(..., K, 3)` corresponding points; weights: `(..., K)` non-negative (None = uniform).
    Returns:
        `(..., 4, 4)` transform (a proper rotation: reflections are fixed with the sign of det).
        Identity when all weights are zero.
    """
    if src.shape != ref.shape or src.shape[-1] != 3:
        raise ValueError(f"src/ref: expected equal shapes (..., K, 3), got {tuple(src.shape)} and {tuple(ref.shape)}")
    if weights is None:
        weights = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device)
    if weights.shape != src.shape[:-1]:
        raise ValueError(f"weights: expected shape {tuple(src.shape[:-1])}, got {tuple(weights.shape)}")
    total = weights.sum(-1, keepdim=True)
    w = weights / total.clamp_min(eps)
    w = w.unsqueeze(-1)
    src_centre = (src * w).sum(-2, keepdim=True)
    ref_centre = (ref * w).sum(-2, keepdim=True)
    cov = ((src - src_centre) * w).transpose(-1, -2) @ (ref - ref_centre)
    u, _, vh = torch.linalg.svd(cov)
    v = vh.transpose(-1, -2)
    sign = torch.sign(torch.det(v @ u.transpose(-1, -2)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    fix = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1))
    rotation = v @ fix @ u.transpose(-1, -2)
    translation = ref_centre.squeeze(-2) - (rotation @ src_centre.transpose(-1, -2)).squeeze(-1)
    transform = to_homogeneous(rotation, translation)
    degenerate = (total.squeeze(-1) <= eps)
    if degenerate.any():
        eye = torch.eye(4, dtype=src.dtype, device=src.device).expand_as(transform)
        transform = torch.where(degenerate[..., None, None], eye, transform)
    return transform


def _residuals(transform: torch.Tensor, src: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    moved = src @ transform[..., :3, :3].transpose(-1, -2) + transform[..., None, :3, 3]
    return torch.linalg.norm(moved - ref, dim=-1)


def lgr_hypotheses(src_corr: torch.Tensor, ref_corr: torch.Tensor, scores: torch.Tensor, patch_index: torch.Tensor,
                   inlier_threshold: float = 0.1, refine_iterations: int = 5, min_patch_correspondences: int = 3):
    """Every pose hypothesis of GeoTransformer-style LGR, refined, best first.

    One hypothesis per matched superpoint patch (weighted SVD on that patch's correspondences), each refined
    by re-running weighted SVD on its inliers over *all* correspondences `refine_iterations` times (weights =
    scores of the current inliers; all hypotheses at once, as one batched SVD). A hypothesis whose inliers drop
    below 3 keeps its previous pose.

    Args:
        src_corr, ref_corr: `(K, 3)` corresponding points; scores: `(K,)` confidences.
        patch_index: `(K,)` int64 patch (superpoint match) of each correspondence.
    Returns:
        (transforms `(H, 4, 4)`, inlier counts `(H,)` int64), sorted by inlier count, descending (stable).
        With no patch of `min_patch_correspondences`, the one hypothesis is the SVD of all correspondences.
    """
    patches = torch.unique(patch_index)
    hyps = [weighted_svd(src_corr[patch_index == p], ref_corr[patch_index == p], scores[patch_index == p])
            for p in patches.tolist() if int((patch_index == p).sum()) >= min_patch_correspondences]
    hyps = torch.stack(hyps) if hyps else weighted_svd(src_corr, ref_corr, scores)[None]
    src_all = src_corr.unsqueeze(0).expand(len(hyps), -1, -1)
    ref_all = ref_corr.unsqueeze(0).expand(len(hyps), -1, -1)
    for _ in range(refine_iterations):
        inliers = _residuals(hyps, src_all, ref_all) < inlier_threshold
        enough = inliers.sum(-1) >= 3
        if not bool(enough.any()):
            break
        refined = weighted_svd(src_all, ref_all, scores.unsqueeze(0) * inliers.to(scores.dtype))
        hyps = torch.where(enough[:, None, None], refined, hyps)
    counts = (_residuals(hyps, src_all, ref_all) < inlier_threshold).sum(-1)
    order = torch.argsort(counts, descending=True, stable=True)
    return hyps[order], counts[order]


def local_to_global_registration(src_corr: torch.Tensor, ref_corr: torch.Tensor, scores: torch.Tensor,
                                 patch_index: torch.Tensor, inlier_threshold: float = 0.1,
                                 refine_iterations: int = 5, min_patch_correspondences: int = 3):
    """GeoTransformer-style LGR: the refined per-patch hypothesis (`lgr_hypotheses`) with the most inliers
    over all correspondences.

    Returns:
        (transform `(4, 4)`, inlier mask `(K,)` bool).
    """
    if src_corr.shape[0] == 0:
        return torch.eye(4, dtype=src_corr.dtype), torch.zeros(0, dtype=torch.bool)
    hyps, _ = lgr_hypotheses(src_corr, ref_corr, scores, patch_index, inlier_threshold, refine_iterations,
                             min_patch_correspondences)
    best = hyps[0]
    return best, _residuals(best, src_corr, ref_corr) < inlier_threshold


def distinct_poses(transforms, max_count: int, rotation_deg: float = 5.0, translation: float = 0.2) -> list:
    """The first `max_count` of `transforms` (iterable of `(4, 4)`) that differ from every earlier kept one
    by more than `rotation_deg` degrees or `translation` metres (near-duplicates refine to the same pose)."""
    kept = []
    cos_limit = np.cos(np.deg2rad(rotation_deg))
    for transform in transforms:
        transform = np.asarray(transform, dtype=np.float64)
        duplicate = any((np.trace(transform[:3, :3].T @ other[:3, :3]) - 1) / 2 > cos_limit
                        and np.linalg.norm(transform[:3, 3] - other[:3, 3]) < translation for other in kept)
        if not duplicate:
            kept.append(transform)
            if len(kept) == max_count:
                break
    return kept


def ransac_correspondences(src_corr: np.ndarray, ref_corr: np.ndarray, distance_threshold: float = 0.05,
                           max_iterations: int = 50000, confidence: float = 0.999, seed: int | None = 0):
    """RANSAC over given correspondences with Open3D's `registration_ransac_based_on_correspondence`.

    Args:
        src_corr, ref_corr: `(K, 3)` corresponding points.
    Returns:
        (transform `(4, 4)` float64 numpy, inlier mask `(K,)` bool numpy).
    """
    import open3d as o3d
    reg = o3d.pipelines.registration
    src_corr = np.asarray(src_corr, dtype=np.float64)
    ref_corr = np.asarray(ref_corr, dtype=np.float64)
    k = len(src_corr)
    if k < 3:
        return np.eye(4), np.zeros(k, dtype=bool)
    if seed is not None:
        o3d.utility.random.seed(int(seed))
    src_pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src_corr))
    ref_pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(ref_corr))
    pairs = o3d.utility.Vector2iVector(np.stack([np.arange(k), np.arange(k)], 1).astype(np.int32))
    result = reg.registration_ransac_based_on_correspondence(
        src_pcd, ref_pcd, pairs, distance_threshold, reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(distance_threshold)],
        reg.RANSACConvergenceCriteria(max_iterations, confidence))
    transform = np.asarray(result.transformation).copy()
    residual = np.linalg.norm(src_corr @ transform[:3, :3].T + transform[:3, 3] - ref_corr, axis=1)
    return transform, residual < distance_threshold
