"""Pre-processing (points -> voxels) and voxel feature encoders (VFE).

Two stages live here because they share the point/voxel bookkeeping:

- `Voxelizer` turns the batch's points `(N, 1 + C)` into a `VoxelizedPoints` (integer voxel
  coordinates plus the point -> voxel map). It has no parameters and is kept separate from the
  network so the network can be exported from plain tensors.
- the VFEs turn a `VoxelizedPoints` into per-voxel features `(V, C_out)`:
  `MeanVFE` (average of the points of hard voxels or dynamic voxels) and `DynamicPointNetVFE`
  (PointNet-style per-point MLP + per-voxel max, with offsets of each point to its voxel centre
  and to the mean of its voxel's points, as in PointPillars / DSVT's `DynPillarVFE`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from pc3d.ops import scatter as _scatter
from pc3d.ops import voxelize as _voxelize


@dataclass
class VoxelizedPoints:
    """Voxelized batch.

    coords: `(V, 4)` int32 `(batch, z, y, x)`, one row per non-empty voxel.
    points: `(N, C)` float32 features of the in-range points (columns in the config's
        `point_features` order, xyz first); `None` in hard mode.
    point_voxel: `(N,)` int64 row of `coords` each point falls in; `None` in hard mode.
    voxel_points: `(V, P, C)` zero-padded points of each voxel (hard mode only).
    voxel_num_points: `(V,)` int32 number of valid points in `voxel_points` (hard mode only).
    """

    coords: torch.Tensor
    batch_size: int
    points: torch.Tensor | None = None
    point_voxel: torch.Tensor | None = None
    voxel_points: torch.Tensor | None = None
    voxel_num_points: torch.Tensor | None = None

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])


def grid_shape(voxel_size: Sequence[float], point_range: Sequence[float]) -> tuple[int, int, int]:
    """`(nz, ny, nx)` of the voxel grid, exactly as `pc3d.ops.voxelize` computes it."""
    return tuple(int(n) for n in _voxelize.voxel_grid(voxel_size, point_range).spatial_shape)


class Voxelizer:
    """Points `(N, 1 + C)` (sample index first) -> `VoxelizedPoints`; parameter-free.

    mode "dynamic": every in-range point is kept and mapped to its voxel (no caps).
    mode "hard": per-sample `hard_voxelize` with `max_points_per_voxel` / `max_voxels`
        (spconv's first-come order), for `MeanVFE`.
    """

    def __init__(self, voxel_size: Sequence[float], point_range: Sequence[float], mode: str = "dynamic",
                 max_points_per_voxel: int = 32, max_voxels: int = 150000):
        if len(voxel_size) != 3 or len(point_range) != 6:
            raise ValueError(f"voxelization: voxel_size needs 3 numbers and point_range 6, got "
                             f"{list(voxel_size)} and {list(point_range)}")
        if mode not in ("dynamic", "hard"):
            raise ValueError(f"voxelization.mode must be 'dynamic' or 'hard', got {mode!r}")
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_range = tuple(float(v) for v in point_range)
        self.mode = mode
        self.max_points_per_voxel = int(max_points_per_voxel)
        self.max_voxels = int(max_voxels)
        self.spatial_shape = grid_shape(self.voxel_size, self.point_range)

    def __call__(self, points: torch.Tensor, batch_size: int) -> VoxelizedPoints:
        if not isinstance(points, torch.Tensor):
            raise TypeError(f"points: expected a torch.Tensor, got {type(points).__name__}")
        if points.ndim != 2 or points.shape[1] < 4:
            raise ValueError(f"points must be (N, 1 + C>=3) with the sample index first, got {tuple(points.shape)}")
        points = points.float()
        # Non-finite points (any column) are dropped like out-of-range ones instead of poisoning the features.
        points = points[torch.isfinite(points).all(dim=1)]
        if points.shape[0] and (points[:, 0].min() < 0 or points[:, 0].max() >= batch_size):
            raise ValueError(f"points: sample index column must be in [0, {batch_size}), got "
                             f"[{float(points[:, 0].min())}, {float(points[:, 0].max())}]")
        if self.mode == "hard":
            return self._hard(points, batch_size)
        return self._dynamic(points, batch_size)

    def _dynamic(self, points: torch.Tensor, batch_size: int) -> VoxelizedPoints:
        batch_index = points[:, 0].long()
        # Sorted (batch, z, y, x) rows, never "first_come": the window partitions (SST regions, DSVT's set
        # pooling) keep the row order of appearance inside a window, so backbone outputs, the shipped
        # checkpoints and the reference parity fixtures all depend on this order.
        result = _voxelize.dynamic_voxelize(points[:, 1:4].contiguous(), self.voxel_size, self.point_range,
                                            batch_index=batch_index, order="sorted")
        coords = torch.as_tensor(result.coords).to(device=points.device, dtype=torch.int32)
        point_voxel = torch.as_tensor(result.point_voxel).to(device=points.device, dtype=torch.int64)
        keep = point_voxel >= 0
        return VoxelizedPoints(coords=coords.reshape(-1, 4), batch_size=batch_size,
                               points=points[keep, 1:].contiguous(), point_voxel=point_voxel[keep])

    def _hard(self, points: torch.Tensor, batch_size: int) -> VoxelizedPoints:
        coords, voxels, counts = [], [], []
        num_features = points.shape[1] - 1
        for sample in range(batch_size):
            pts = points[points[:, 0] == sample, 1:]
            result = _voxelize.hard_voxelize(pts.contiguous(), self.voxel_size, self.point_range,
                                             self.max_points_per_voxel, self.max_voxels)
            c = torch.as_tensor(result.coords).to(points.device, torch.int32).reshape(-1, 3)
            coords.append(torch.cat([torch.full_like(c[:, :1], sample), c], dim=1))
            voxels.append(torch.as_tensor(result.voxels).to(points.device, torch.float32)
                          .reshape(-1, self.max_points_per_voxel, num_features))
            counts.append(torch.as_tensor(result.num_points).to(points.device, torch.int32).reshape(-1))
        return VoxelizedPoints(coords=torch.cat(coords), batch_size=batch_size,
                               voxel_points=torch.cat(voxels), voxel_num_points=torch.cat(counts))


class MeanVFE(nn.Module):
    """Per-voxel mean of the point features; works for hard and dynamic voxels. `(V, C)`."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.out_channels = in_channels

    def forward(self, voxelized: VoxelizedPoints) -> torch.Tensor:
        if voxelized.voxel_points is not None:
            total = voxelized.voxel_points.sum(dim=1)
            count = voxelized.voxel_num_points.clamp(min=1).to(total.dtype).unsqueeze(1)
            return total / count
        return _scatter.segment_mean(voxelized.points, voxelized.point_voxel, voxelized.num_voxels)


class _PointNetLayer(nn.Module):
    """Linear (no bias) + BatchNorm + ReLU per point, then max over each voxel.

    A non-final layer outputs half its width per point and concatenates the voxel max back onto
    every point (PointPillars' PFN), so the next layer sees local and voxel context.
    """

    def __init__(self, in_channels: int, out_channels: int, last: bool, use_norm: bool):
        super().__init__()
        self.last = last
        width = out_channels if last else out_channels // 2
        self.linear = nn.Linear(in_channels, width, bias=not use_norm)
        self.norm = nn.BatchNorm1d(width, eps=1e-3, momentum=0.01) if use_norm else nn.Identity()

    def forward(self, x: torch.Tensor, point_voxel: torch.Tensor, num_voxels: int):
        x = torch.relu(self.norm(self.linear(x)))
        voxel_max = _scatter.segment_max(x, point_voxel, num_voxels)
        if self.last:
            return voxel_max
        return torch.cat([x, voxel_max[point_voxel]], dim=1)


class DynamicPointNetVFE(nn.Module):
    """Dynamic pillar / voxel feature encoder (DSVT's DynPillarVFE / DynamicVoxelVFE).

    Point inputs: the raw point features (absolute xyz + extras), optionally the offset to the
    mean of its voxel's points (`use_cluster_center`), the offset to its voxel's geometric centre
    (`use_voxel_center`) and the range `|xyz|` (`with_distance`). Output `(V, channels[-1])`.
    For pillars (nz = 1) the voxel-centre z offset is the offset to the pillar's mid-height.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], voxel_size: Sequence[float],
                 point_range: Sequence[float], use_cluster_center: bool = True, use_voxel_center: bool = True,
                 with_distance: bool = False, use_norm: bool = True):
        super().__init__()
        if not channels:
            raise ValueError("vfe.channels must list at least one width")
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_range = tuple(float(v) for v in point_range)
        # validated once, outside forward (see `pc3d.ops.voxelize.voxel_centers`)
        self._centre_constants = _voxelize.voxel_grid(self.voxel_size, self.point_range).centre_constants()
        self.use_cluster_center = use_cluster_center
        self.use_voxel_center = use_voxel_center
        self.with_distance = with_distance
        width = in_channels + 3 * use_cluster_center + 3 * use_voxel_center + int(with_distance)
        layers = []
        for i, out in enumerate(channels):
            layers.append(_PointNetLayer(width, int(out), last=i == len(channels) - 1, use_norm=use_norm))
            width = int(out)
        self.layers = nn.ModuleList(layers)
        self.out_channels = int(channels[-1])

    def point_inputs(self, voxelized: VoxelizedPoints) -> torch.Tensor:
        """Per-point input features `(N, C_in)`."""
        points, point_voxel = voxelized.points, voxelized.point_voxel
        xyz = points[:, :3]
        parts = [points]
        if self.use_cluster_center:
            parts.append(_voxelize.point_offsets_to_cluster_center(xyz, point_voxel, voxelized.num_voxels))
        if self.use_voxel_center:
            parts.append(_voxelize.point_offsets_to_voxel_center(xyz, point_voxel, voxelized.coords,
                                                                 constants=self._centre_constants))
        if self.with_distance:
            parts.append(torch.linalg.norm(xyz, dim=1, keepdim=True))
        return torch.cat(parts, dim=1)

    def forward(self, voxelized: VoxelizedPoints) -> torch.Tensor:
        if voxelized.points is None:
            raise ValueError("DynamicPointNetVFE needs dynamic voxelization (voxelization.mode: dynamic)")
        x = self.point_inputs(voxelized)
        for layer in self.layers:
            x = layer(x, voxelized.point_voxel, voxelized.num_voxels)
        return x


def build_vfe(cfg: dict, in_channels: int, voxel_size, point_range, mode: str) -> nn.Module:
    """`vfe: {type: mean | dynamic_pillar | dynamic_voxel, channels: [...], ...}`."""
    cfg = dict(cfg or {"type": "mean"})
    kind = cfg.pop("type", "mean")
    if kind == "mean":
        if cfg:
            raise ValueError(f"vfe type 'mean' takes no options, got {sorted(cfg)}")
        return MeanVFE(in_channels)
    if kind in ("dynamic_pillar", "dynamic_voxel"):
        if mode != "dynamic":
            raise ValueError(f"vfe type {kind!r} needs voxelization.mode: dynamic, got {mode!r}")
        channels = cfg.pop("channels", [64, 64])
        allowed = {"use_cluster_center", "use_voxel_center", "with_distance", "use_norm"}
        unknown = set(cfg) - allowed
        if unknown:
            raise ValueError(f"vfe {kind!r}: unknown options {sorted(unknown)} (allowed: {sorted(allowed)})")
        return DynamicPointNetVFE(in_channels, channels, voxel_size, point_range, **cfg)
    raise ValueError(f"unknown vfe type {kind!r} (mean, dynamic_pillar, dynamic_voxel)")
