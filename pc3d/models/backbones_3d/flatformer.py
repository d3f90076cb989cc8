"""FlatFormer backbone (Liu et al., "FlatFormer: Flattened Window Attention for Efficient Point Cloud
Transformer", CVPR 2023).

`num_blocks` blocks of 4 post-norm attention layers over equal-size groups of the flattened window
orders x, x-shift, y, y-shift (`pc3d.ops.partition.flattened_windows`), with a sinusoidal position
encoding of the global (x, y) voxel coordinates added to queries and keys. Pillar backbone: the
output keeps the input voxels. Padded slots (FlatFormer's tail padding) are masked as keys by default; the
reference attends to them (`mask_padding=False`, set for converted checkpoints, docs/reference_parity.md).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pc3d.models.attention import PaddedGroupLayer, sinusoidal_position_embedding
from pc3d.ops.partition.flattened_windows import ORDERS, flattened_window_mappings
from pc3d.structures import SparseVoxels

from ._common import as_int_tuple, check_voxels


class FlatFormer(nn.Module):
    """forward(SparseVoxels) -> SparseVoxels with `dim` channels on the same voxels.

    Args:
        in_channels: input width (projected to `dim` by a Linear when different).
        window_shape: (wx, wy) or (wx, wy, 1) window of the flattened order (9x9 on Waymo).
        group_size: voxels per attention group (69 on Waymo).
        num_blocks: blocks of 4 layers (x, x-shift, y, y-shift).
        dim, num_heads, ffn_ratio (hidden = ffn_ratio * dim), activation.
        pos_temperature, normalize_pos: sinusoidal encoding settings (normalize maps the grid to 2 pi).
        mask_padding: mask the repeated tail slots of each sample as keys (pc3d's choice); False attends
            to them like the reference FlatFormer does (converted checkpoints).
        pos_pi: the pi of `normalize_pos` (the reference writes 3.1415; converted checkpoints use that).
    """

    def __init__(self, in_channels: int, window_shape=(9, 9), group_size: int = 69, num_blocks: int = 2,
                 dim: int = 128, num_heads: int = 8, ffn_ratio: int = 2, activation: str = "gelu",
                 pos_temperature: float = 10000.0, normalize_pos: bool = False, mask_padding: bool = True,
                 pos_pi: float = math.pi):
        super().__init__()
        window_shape = tuple(window_shape)
        self.window_shape = as_int_tuple(window_shape[:2], 2, "window_shape")
        if len(window_shape) == 3 and int(window_shape[2]) != 1:
            raise ValueError(f"window_shape: FlatFormer windows are pillars (wz = 1), got {window_shape}")
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size: expected a positive int, got {group_size!r}")
        self.group_size = group_size
        self.in_channels, self.dim, self.out_channels = int(in_channels), int(dim), int(dim)
        self.pos_temperature, self.normalize_pos, self.mask_padding = pos_temperature, normalize_pos, mask_padding
        self.pos_pi = float(pos_pi)
        self.input_proj = nn.Identity() if in_channels == dim else nn.Linear(in_channels, dim)
        self.blocks = nn.ModuleList([
            nn.ModuleList([PaddedGroupLayer(dim, num_heads, ffn_ratio * dim, activation) for _ in ORDERS])
            for _ in range(num_blocks)])

    def position_encoding(self, coords: torch.Tensor, spatial_shape) -> torch.Tensor:
        """(V, 4) (batch, z, y, x) -> (V, dim) sinusoidal encoding of (x, y)."""
        x, y = coords[:, 3].float(), coords[:, 2].float()
        if self.normalize_pos:
            x = x / spatial_shape[2] * 2 * self.pos_pi
            y = y / spatial_shape[1] * 2 * self.pos_pi
        return sinusoidal_position_embedding(torch.stack([x, y], dim=1), self.dim, self.pos_temperature)

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        check_voxels(voxels, self.in_channels, type(self).__name__)
        x = self.input_proj(voxels.features)
        pos = self.position_encoding(voxels.coords, voxels.spatial_shape).to(x.dtype)
        mappings = flattened_window_mappings(voxels.coords, voxels.spatial_shape, self.window_shape, self.group_size)
        for block in self.blocks:
            for name, layer in zip(ORDERS, block):
                m = mappings[name]
                mask = m.key_padding_mask if self.mask_padding else None
                x = layer(x, pos, m.voxel_index, mask, m.slot_of_voxel)
        return voxels.with_features(x)
