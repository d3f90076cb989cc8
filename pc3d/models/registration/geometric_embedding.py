"""Rotation-invariant embeddings for the superpoint transformer.

- `GeometricStructureEmbedding` (GeoTransformer): for superpoints i, j, a sinusoidal embedding of the pair
  distance `d_ij / sigma_d` plus the max over i's k nearest superpoints x of the embedded triplet angle
  `angle(x - p_i, p_j - p_i) / sigma_a`. Output `(N, N, d)`; used as a relative bias in self-attention.
- `RotationInvariantPosition` (RoITr's cross-attention position): per superpoint, an MLP of the PPFs
  to its k nearest superpoints, max-pooled -> `(N, d)`. It depends only on the cloud itself, so it can be
  compared across the two clouds in cross-attention.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pc3d.ops.point_ops import knn, point_pair_features, vector_angle

from .ppf_attention import PPFEmbedding


def sinusoidal_embedding(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoid of a scalar field `(...)` -> `(..., dim)` (dim even)."""
    if dim % 2:
        raise ValueError(f"dim: must be even, got {dim}")
    freq = torch.exp(torch.arange(0, dim, 2, dtype=x.dtype, device=x.device) * (-math.log(10000.0) / dim))
    angles = x.unsqueeze(-1) * freq
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)


class GeometricStructureEmbedding(nn.Module):
    """`points (N, 3)` -> `(N, N, dim)` pair embedding from distances and triplet angles."""

    def __init__(self, dim: int, sigma_d: float = 0.2, sigma_a: float = 15.0, angle_k: int = 3):
        super().__init__()
        self.dim = dim
        self.sigma_d = float(sigma_d)
        self.factor_a = 180.0 / (float(sigma_a) * math.pi)
        self.angle_k = int(angle_k)
        self.proj_d = nn.Linear(dim, dim)
        self.proj_a = nn.Linear(dim, dim)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        n = points.shape[0]
        dist = torch.cdist(points, points)
        emb = self.proj_d(sinusoidal_embedding(dist / self.sigma_d, self.dim))
        k = min(self.angle_k, n - 1)
        if k > 0:
            _, idx = knn(points, points, k + 1)
            anchors = points[idx[:, 1:]]                                    # (N, k, 3), self excluded
            ref_vec = (anchors - points.unsqueeze(1)).unsqueeze(2)          # (N, k, 1, 3)
            pair_vec = (points.unsqueeze(0) - points.unsqueeze(1)).unsqueeze(1)  # (N, 1, N, 3)
            angles = vector_angle(ref_vec.expand(-1, -1, n, -1), pair_vec.expand(-1, k, -1, -1))  # (N, k, N)
            angle_emb = self.proj_a(sinusoidal_embedding(angles * self.factor_a, self.dim))
            emb = emb + angle_emb.max(dim=1).values
        return emb


class RotationInvariantPosition(nn.Module):
    """`points (N, 3), normals (N, 3)` -> `(N, dim)` max-pooled PPF embedding over k nearest superpoints."""

    def __init__(self, dim: int, k: int = 8, distance_scale: float = 1.0):
        super().__init__()
        self.k = int(k)
        self.embedding = PPFEmbedding(dim, distance_scale)

    def forward(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        k = min(self.k + 1, points.shape[0])
        _, idx = knn(points, points, k)
        ppf = point_pair_features(points.unsqueeze(1), normals.unsqueeze(1), points[idx], normals[idx])
        return self.embedding(ppf).max(dim=1).values
