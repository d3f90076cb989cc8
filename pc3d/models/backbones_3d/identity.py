"""No 3D backbone (PointPillars-style): the VFE features go straight to the BEV scatter."""
from __future__ import annotations

from torch import nn

from pc3d.structures import SparseVoxels


class IdentityBackbone3D(nn.Module):
    """`SparseVoxels -> SparseVoxels` unchanged; `out_channels` is the VFE's width."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.out_channels = in_channels

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        return voxels
