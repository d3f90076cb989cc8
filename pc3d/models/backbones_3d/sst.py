"""SST single-stride backbone (Fan et al., "Embracing Single Stride 3D Object Detector with Sparse
Transformer", CVPR 2022).

Post-norm regional attention layers; windows alternate between unshifted and half-window shifted
grids. Windows are bucketed by voxel count into token budgets (`pc3d.ops.partition.sst_regions`);
voxels beyond a window's budget are dropped from attention and pass through the layer unchanged
(SST removes them from its output; here the output keeps every input voxel so the backbone is a
drop-in SparseVoxels -> SparseVoxels module). Position encoding: sinusoidal in-window (x, y).
ONNX-exportable with the region bucketing in the graph (no branch on a data-dependent size; see `SSTLayer`).
"""
from __future__ import annotations

import torch
from torch import nn

from pc3d.models.attention import GroupAttention, FeedForward, sinusoidal_position_embedding
from pc3d.ops.partition.sst_regions import DEFAULT_DROP_LEVELS, flat_slots, sst_region_groups
from pc3d.structures import SparseVoxels

from ._common import as_int_tuple, check_voxels


class SSTLayer(nn.Module):
    def __init__(self, dim, num_heads, dim_feedforward, activation):
        super().__init__()
        self.attn = GroupAttention(dim, num_heads)
        self.ffn = FeedForward(dim, dim_feedforward, activation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, regions) -> torch.Tensor:
        # Every level runs, even with no window (a (0, max_tokens, C) batch): no branch on a data-dependent
        # size, so the layer exports to ONNX. Outputs return to voxel order by one gather (`flat_slots`).
        outs = [self.attn(x[level.voxel_index], pos[level.voxel_index], level.key_padding_mask)
                for level in regions.levels]
        attended = flat_slots(outs)[regions.slot_of_voxel]
        keep = regions.keep_mask[:, None]
        y = self.norm1(x + attended)
        y = self.norm2(y + self.ffn(y))
        return torch.where(keep, y, x)  # dropped voxels skip the layer


class SST(nn.Module):
    """forward(SparseVoxels) -> SparseVoxels with `dim` channels on the same voxels.

    Args: in_channels; window_shape (wx, wy[, wz]); num_layers (alternating shifts); dim; num_heads;
    dim_feedforward; drop_levels (sequence of (max_tokens, lower, upper), SST's Waymo training
    buckets by default); activation; pos_temperature.
    """

    def __init__(self, in_channels: int, window_shape=(12, 12, 1), num_layers: int = 6, dim: int = 128,
                 num_heads: int = 8, dim_feedforward: int = 256, drop_levels=DEFAULT_DROP_LEVELS,
                 activation: str = "gelu", pos_temperature: float = 10000.0):
        super().__init__()
        window_shape = tuple(window_shape)
        self.window_shape = as_int_tuple(window_shape + (1,) * (3 - len(window_shape)), 3, "window_shape")
        self.shift = (self.window_shape[0] // 2, self.window_shape[1] // 2, 0)
        self.drop_levels = tuple(tuple(int(v) for v in level) for level in drop_levels)
        self.in_channels, self.dim, self.out_channels = int(in_channels), int(dim), int(dim)
        self.pos_temperature = pos_temperature
        self.input_proj = nn.Identity() if in_channels == dim else nn.Linear(in_channels, dim)
        self.layers = nn.ModuleList([SSTLayer(dim, num_heads, dim_feedforward, activation) for _ in range(num_layers)])

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        check_voxels(voxels, self.in_channels, type(self).__name__)
        x = self.input_proj(voxels.features)
        configs = []
        for shift in ((0, 0, 0), self.shift):
            regions = sst_region_groups(voxels.coords, voxels.spatial_shape, self.window_shape, shift, self.drop_levels)
            _, iy, ix = regions.coords_in_window.float().unbind(1)
            loc = torch.stack([ix - self.window_shape[0] / 2, iy - self.window_shape[1] / 2], dim=1)
            configs.append((regions, sinusoidal_position_embedding(loc, self.dim, self.pos_temperature).to(x.dtype)))
        for i, layer in enumerate(self.layers):
            regions, pos = configs[i % 2]
            x = layer(x, pos, regions)
        return voxels.with_features(x)
