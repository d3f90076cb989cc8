"""Build a single pc3d stage from pc3d model sections and run it on OpenPCDet-style `batch_dict` inputs.

Shared by the converter files: they decide the pc3d config and weights; this module holds the wiring from
reference input names to pc3d's stage modules, so a new family reuses it for stages it shares.
"""
from __future__ import annotations

import torch
from torch import nn

from pc3d.compat.registry import ConversionError, RefContext
from pc3d.models.vfe import VoxelizedPoints
from pc3d.structures import SparseVoxels


def need_inputs(inputs: dict, names: tuple[str, ...], who: str) -> None:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ConversionError(f"{who}: fixture inputs lack {missing} (has {sorted(inputs)})")


def batch_size_of(inputs: dict) -> int:
    value = inputs.get("batch_size", 1)
    return int(value.item() if isinstance(value, torch.Tensor) else value)


def hard_voxels(inputs: dict, who: str) -> VoxelizedPoints:
    """OpenPCDet's `voxels`, `voxel_num_points`, `voxel_coords` -> pc3d `VoxelizedPoints` (hard mode)."""
    need_inputs(inputs, ("voxels", "voxel_num_points", "voxel_coords"), who)
    return VoxelizedPoints(coords=inputs["voxel_coords"].int(), batch_size=batch_size_of(inputs),
                           voxel_points=inputs["voxels"].float(), voxel_num_points=inputs["voxel_num_points"].int())


def sparse_voxels(features: torch.Tensor, coords: torch.Tensor, spatial_shape, batch_size: int,
                  ctx: RefContext) -> SparseVoxels:
    return SparseVoxels(features.float(), coords.int(), tuple(int(s) for s in spatial_shape), batch_size,
                        ctx.voxel_size or (0.0, 0.0, 0.0), ctx.point_cloud_range or (0.0,) * 6)


def build_vfe(cfg: dict, ctx: RefContext, inputs: dict) -> nn.Module:
    from pc3d.models.vfe import build_vfe as _build
    ctx.need("num_point_features", who="VFE")
    vox = cfg.get("voxelization", {})
    return _build(cfg.get("vfe"), ctx.num_point_features, ctx.voxel_size or (1.0, 1.0, 1.0),
                  ctx.point_cloud_range or (0.0, 0.0, 0.0, 1.0, 1.0, 1.0), vox.get("mode", "dynamic"))


def build_backbone_3d(cfg: dict, ctx: RefContext, inputs: dict) -> nn.Module:
    from pc3d.models.detector import _build_backbone_3d
    ctx.need("input_channels", who="BACKBONE_3D")
    return _build_backbone_3d(cfg.get("backbone_3d"), ctx.input_channels)


def build_to_bev(cfg: dict, ctx: RefContext, inputs: dict) -> nn.Module:
    from pc3d.models.to_bev import build_to_bev as _build
    need_inputs(inputs, ("encoded_spconv_tensor.features", "encoded_spconv_tensor.spatial_shape"), "MAP_TO_BEV")
    channels = int(inputs["encoded_spconv_tensor.features"].shape[1])
    shape = tuple(int(s) for s in inputs["encoded_spconv_tensor.spatial_shape"])
    return _build(cfg.get("to_bev"), channels, shape)


def build_backbone_2d(cfg: dict, ctx: RefContext, inputs: dict) -> nn.Module:
    from pc3d.models.backbones_2d import build_backbone_2d as _build
    ctx.need("input_channels", who="BACKBONE_2D")
    return _build(cfg.get("backbone_2d"), ctx.input_channels)


def build_head(cfg: dict, ctx: RefContext, inputs: dict) -> nn.Module:
    from pc3d.models.heads.centerpoint import build_head as _build
    ctx.need("input_channels", "class_names", "voxel_size", "point_cloud_range", who="DENSE_HEAD")
    head_cfg = dict(cfg["head"])
    stride = int(head_cfg.get("feature_stride", 1))
    return _build(head_cfg, ctx.input_channels, ctx.class_names, ctx.voxel_size, ctx.point_cloud_range, stride)


def build_detector(cfg: dict, ctx: RefContext, inputs: dict) -> nn.Module:
    from pc3d.models.detector import build_detector as _build
    ctx.need("class_names", "voxel_size", "point_cloud_range", who="detector")
    model = dict(cfg)
    model["voxelization"] = {**model.get("voxelization", {}), "voxel_size": list(ctx.voxel_size),
                             "point_range": list(ctx.point_cloud_range)}
    return _build(model, ctx.class_names, ctx.feature_names)
