"""Sparse voxels -> dense bird's-eye-view feature map `(B, C_bev, ny, nx)`.

- `PillarScatter` (type `scatter`): voxels of a single z layer (nz = 1) written into the BEV grid
  (PointPillars' scatter, DSVT's `PointPillarScatter3d`).
- `HeightCompression` (type `height_compression`): a 3D grid with nz layers, scattered densely and
  its z layers stacked into channels (`C_bev = C * nz`, channel-major like OpenPCDet's
  `HeightCompression`), for 3D sparse-conv backbones.
"""
from __future__ import annotations

import torch
from torch import nn

from pc3d.ops.partition.windows import is_exporting
from pc3d.ops.voxelize import linear_voxel_key
from pc3d.structures import SparseVoxels


def scatter_to_dense(voxels: SparseVoxels) -> torch.Tensor:
    """Dense `(B, C, nz, ny, nx)` grid of `voxels.features`; empty cells are 0.

    Duplicate coordinates are not expected (backbones keep voxels unique); the last write wins.
    """
    nz, ny, nx = voxels.spatial_shape
    features = voxels.features
    channels = features.shape[1]
    coords = voxels.coords.long()
    # written channel-major: (C, B * cells) -> (B, C, nz, ny, nx) is a view for B = 1 (no transposing copy
    # of the whole grid, which cost more than the scatter itself on large BEV grids)
    cells = linear_voxel_key(coords[:, 1:], voxels.spatial_shape)
    flat = linear_voxel_key(coords, voxels.spatial_shape)
    if voxels.batch_size == 1 and not is_exporting():  # the export keeps the row-major scatter it was tested with
        dense = features.new_zeros(channels, nz * ny * nx)
        dense = dense.index_copy(1, cells, features.t())
        return dense.view(1, channels, nz, ny, nx)
    dense = features.new_zeros(voxels.batch_size * nz * ny * nx, channels)
    dense = dense.index_copy(0, flat, features)
    return dense.view(voxels.batch_size, nz, ny, nx, channels).permute(0, 4, 1, 2, 3)


class PillarScatter(nn.Module):
    """Pillars (nz = 1) -> `(B, C, ny, nx)`."""

    def __init__(self, in_channels: int, spatial_shape: tuple[int, int, int]):
        super().__init__()
        if spatial_shape[0] != 1:
            raise ValueError(f"to_bev type 'scatter' needs a single z layer, the backbone output grid is "
                             f"{tuple(spatial_shape)} (nz, ny, nx); use type 'height_compression'")
        self.spatial_shape = tuple(spatial_shape)
        self.out_channels = in_channels

    def forward(self, voxels: SparseVoxels) -> torch.Tensor:
        return scatter_to_dense(voxels)[:, :, 0]


class HeightCompression(nn.Module):
    """3D grid `(nz, ny, nx)` -> `(B, C * nz, ny, nx)` (z layers stacked into channels)."""

    def __init__(self, in_channels: int, spatial_shape: tuple[int, int, int]):
        super().__init__()
        self.spatial_shape = tuple(spatial_shape)
        self.out_channels = in_channels * spatial_shape[0]

    def forward(self, voxels: SparseVoxels) -> torch.Tensor:
        if tuple(voxels.spatial_shape) != self.spatial_shape:
            raise ValueError(f"height_compression was built for grid {self.spatial_shape}, got {voxels.spatial_shape}")
        dense = scatter_to_dense(voxels)
        b, c, nz, ny, nx = dense.shape
        return dense.reshape(b, c * nz, ny, nx)


def build_to_bev(cfg: dict | None, in_channels: int, spatial_shape: tuple[int, int, int] | None) -> nn.Module:
    """`to_bev: {type: scatter | height_compression, spatial_shape: [nz, ny, nx] (optional)}`;
    `spatial_shape` is the 3D backbone's output grid. A declared `spatial_shape` (a converted reference
    config states its BEV grid) must equal it; with `spatial_shape=None` the declared one is used."""
    cfg = dict(cfg or {"type": "scatter"})
    kind = cfg.pop("type", "scatter")
    declared = cfg.pop("spatial_shape", None)
    if declared is not None:
        declared = tuple(int(v) for v in declared)
        if spatial_shape is not None and tuple(spatial_shape) != declared:
            raise ValueError(f"to_bev.spatial_shape {list(declared)} differs from the 3D backbone's output grid "
                             f"{list(spatial_shape)} (nz, ny, nx)")
        spatial_shape = declared
    if spatial_shape is None:
        raise ValueError("to_bev: the BEV grid is unknown (give to_bev.spatial_shape [nz, ny, nx])")
    if cfg:
        raise ValueError(f"to_bev {kind!r}: unknown options {sorted(cfg)}")
    if kind == "scatter":
        return PillarScatter(in_channels, spatial_shape)
    if kind == "height_compression":
        return HeightCompression(in_channels, spatial_shape)
    raise ValueError(f"unknown to_bev type {kind!r} (scatter, height_compression)")
