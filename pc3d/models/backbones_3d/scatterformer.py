"""ScatterFormer backbone (He et al., "ScatterFormer: Efficient Voxel Transformer with Scattered
Linear Attention", ECCV 2024), CPU / pure-PyTorch version.

Each layer (pre-norm, residual):
1. scattered linear attention inside windows of variable length (no padding); windows alternate
   between unshifted and half-window shifted grids layer by layer (`pc3d.models.attention`);
2. cross-window interaction (CWI): depthwise sparse 2D convolutions on channel groups (identity,
   1xK along x, Kx1 along y, 3x3), implemented with a sorted-key neighbour lookup instead of a
   spconv depthwise kernel (spconv 2.x has no grouped convolution), followed by a pointwise Linear;
3. feed-forward network.
Pillar backbone: the output keeps the input voxels.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pc3d.models.attention import FeedForward, ScatteredLinearAttention
from pc3d.ops.partition.scattered_windows import scattered_windows
from pc3d.ops.voxelize import linear_voxel_key
from pc3d.structures import SparseVoxels

from ._common import as_int_tuple, check_voxels


def neighbor_index(coords: torch.Tensor, spatial_shape, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """Row of the voxel at `(y + dy, x + dx)` (same batch and z) for each offset, V when absent.

    coords: (V, 4) (batch, z, y, x); offsets: K (dy, dx) pairs. Returns (V, K) int64.
    """
    nz, ny, nx = spatial_shape
    c = coords.long()
    v = c.shape[0]
    if v == 0:
        return torch.zeros(0, len(offsets), dtype=torch.long, device=c.device)
    key = linear_voxel_key(c, spatial_shape)
    sorted_key, order = torch.sort(key)
    dy = torch.tensor([o[0] for o in offsets], device=c.device)
    dx = torch.tensor([o[1] for o in offsets], device=c.device)
    y = c[:, 2:3] + dy[None]
    x = c[:, 3:4] + dx[None]
    inside = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
    target = linear_voxel_key((c[:, 0:1], c[:, 1:2], y, x), spatial_shape)
    pos = torch.searchsorted(sorted_key, target).clamp(max=v - 1)
    found = inside & (sorted_key[pos] == target)
    return torch.where(found, order[pos], torch.full_like(pos, v))


class SparseDepthwiseConv2d(nn.Module):
    """Depthwise sparse convolution over the BEV neighbourhood `offsets` (submanifold: output on input voxels).

    forward(x (V, C), neighbors (V, K)) -> (V, C) with `out[i] = sum_k w[k] * x[neighbors[i, k]]`
    (absent neighbours contribute zero).
    """

    def __init__(self, channels: int, num_offsets: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_offsets, channels) / math.sqrt(num_offsets))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])], dim=0)
        return (padded[neighbors] * self.weight[None]).sum(1) + self.bias


def cwi_offsets(kernel_size: int) -> dict[str, list[tuple[int, int]]]:
    """Neighbourhoods (dy, dx) of the CWI channel groups."""
    r = kernel_size // 2
    return {"x": [(0, d) for d in range(-r, r + 1)],
            "y": [(d, 0) for d in range(-r, r + 1)],
            "square": [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]}


class CrossWindowInteraction(nn.Module):
    """Channel groups: identity | 1xK (x) | Kx1 (y) | 3x3 depthwise sparse convs, then a Linear."""

    def __init__(self, dim: int, kernel_size: int = 7):
        super().__init__()
        group = dim // 4
        self.split = [dim - 3 * group, group, group, group]
        offsets = cwi_offsets(kernel_size)
        self.convs = nn.ModuleDict({name: SparseDepthwiseConv2d(group, len(o)) for name, o in offsets.items()})
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, neighbors: dict[str, torch.Tensor]) -> torch.Tensor:
        ident, gx, gy, gs = torch.split(x, self.split, dim=1)
        out = torch.cat([ident, self.convs["x"](gx, neighbors["x"]), self.convs["y"](gy, neighbors["y"]),
                         self.convs["square"](gs, neighbors["square"])], dim=1)
        return self.proj(out)


class ScatterFormerLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_ratio: int, kernel_size: int, activation: str):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = ScatteredLinearAttention(dim, num_heads)
        self.cwi = CrossWindowInteraction(dim, kernel_size)
        self.ffn = FeedForward(dim, ffn_ratio * dim, activation)

    def forward(self, x, window, num_windows, neighbors):
        x = x + self.attn(self.norm1(x), window, num_windows)
        x = x + self.cwi(self.norm2(x), neighbors)
        return x + self.ffn(self.norm3(x))


class ScatterFormer(nn.Module):
    """forward(SparseVoxels) -> SparseVoxels with `dim` channels on the same voxels.

    Args: in_channels; window_shape (wx, wy[, wz]) (12x12 pillars by default); num_layers (layers
    alternate unshifted / half-shifted windows); dim; num_heads; ffn_ratio; kernel_size (K of the
    CWI strip convolutions); activation.
    """

    def __init__(self, in_channels: int, window_shape=(12, 12, 1), num_layers: int = 4, dim: int = 128,
                 num_heads: int = 8, ffn_ratio: int = 2, kernel_size: int = 7, activation: str = "gelu"):
        super().__init__()
        window_shape = tuple(window_shape)
        self.window_shape = as_int_tuple(window_shape + (1,) * (3 - len(window_shape)), 3, "window_shape")
        self.shift = (self.window_shape[0] // 2, self.window_shape[1] // 2, 0)
        self.in_channels, self.out_channels = int(in_channels), int(dim)
        self.kernel_size = int(kernel_size)
        self.input_proj = nn.Identity() if in_channels == dim else nn.Linear(in_channels, dim)
        self.layers = nn.ModuleList([ScatterFormerLayer(dim, num_heads, ffn_ratio, kernel_size, activation)
                                     for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        check_voxels(voxels, self.in_channels, type(self).__name__)
        x = self.input_proj(voxels.features)
        coords, shape = voxels.coords, voxels.spatial_shape
        windows = [scattered_windows(coords, shape, self.window_shape, shift)
                   for shift in ((0, 0, 0), self.shift)]
        neighbors = {name: neighbor_index(coords, shape, offsets)
                     for name, offsets in cwi_offsets(self.kernel_size).items()}
        for i, layer in enumerate(self.layers):
            w = windows[i % 2]
            x = layer(x, w.window_of_voxel, w.counts.shape[0], neighbors)
        return voxels.with_features(self.norm_out(x))
