"""The 3D detector, composed from a YAML `model:` block.

    points -> Voxelizer -> VFE -> backbone_3d -> to_bev -> backbone_2d -> CenterPoint head -> boxes

`Detector.voxelize(batch)` is the parameter-free pre-processing; `Detector.forward_voxels(voxelized)`
is the network (tensors in, `HeadPrediction`s out) so it can be exported on its own.
`Detector.forward(batch)` returns a `DetectorLoss` in training mode and `list[Boxes3D]` in eval mode.

Model config (all blocks except `voxelization` / `head` optional)::

    model:
      voxelization: {voxel_size: [sx, sy, sz], point_range: [...6], mode: dynamic | hard,
                     max_points_per_voxel: 32, max_voxels: 150000}   # point_range defaults to dataset's
      vfe: {type: mean | dynamic_pillar | dynamic_voxel, channels: [..], use_cluster_center, use_voxel_center,
            with_distance, use_norm}
      backbone_3d: {type: identity | dsvt_pillar | dsvt_voxel | flatformer | scatterformer | sst | spconv_resnet, ...}
      to_bev: {type: scatter | height_compression}
      backbone_2d: {type: second | resnet | none, layer_nums, layer_strides, num_filters, upsample_strides,
                    num_upsample_filters}
      head: {type: centerpoint, class_groups, feature_stride, shared_channels, num_conv, heatmap, regression,
             iou_rectification, loss_weights, decode}
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from pc3d.models.backbones_2d import build_backbone_2d
from pc3d.models.backbones_3d.identity import IdentityBackbone3D  # noqa: F401 (PointPillars' "no 3D backbone")
from pc3d.models.heads.centerpoint import HeadPrediction, build_head
from pc3d.models.to_bev import build_to_bev
from pc3d.models.vfe import VoxelizedPoints, Voxelizer, build_vfe
from pc3d.structures import Batch, Boxes3D, SparseVoxels

_MODEL_KEYS = ("voxelization", "vfe", "backbone_3d", "to_bev", "backbone_2d", "head")


@dataclass
class DetectorLoss:
    """Training loss: `total` (scalar, backprop this) and its weighted `parts` (heatmap, regression, iou)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def as_floats(self) -> dict[str, float]:
        """`{"total": .., "heatmap": .., ...}` detached, for logging."""
        return {"total": float(self.total.detach()), **{k: float(v.detach()) for k, v in self.parts.items()}}


def _build_backbone_3d(cfg: dict | None, in_channels: int) -> nn.Module:
    from pc3d.models.backbones_3d import build_backbone_3d, canonical_backbone_3d

    cfg = dict(cfg or {"type": "identity"})
    kind = canonical_backbone_3d(cfg.get("type", "identity")) or cfg.get("type")
    if kind == "identity" and set(cfg) - {"type"}:
        raise ValueError(f"backbone_3d type 'identity' takes no options, got {sorted(set(cfg) - {'type'})}")
    cfg["type"] = kind  # unknown names reach build_backbone_3d, which lists the table
    if "in_channels" in cfg and int(cfg["in_channels"]) != in_channels:
        raise ValueError(f"backbone_3d.in_channels is {cfg['in_channels']} but the VFE outputs {in_channels}")
    cfg["in_channels"] = in_channels  # the VFE decides the input width
    return build_backbone_3d(cfg)


@torch.no_grad()
def _probe_output_grid(backbone: nn.Module, in_channels: int, spatial_shape, voxel_size, point_range):
    """Run the 3D backbone once on two dummy voxels to learn its output grid `(nz, ny, nx)` and width."""
    if isinstance(backbone, IdentityBackbone3D):
        return tuple(spatial_shape), in_channels
    if hasattr(backbone, "output_grid"):  # known without running it (spconv-triton cannot run on the CPU)
        return tuple(backbone.output_grid(spatial_shape)), int(backbone.out_channels)
    nz, ny, nx = spatial_shape
    coords = torch.tensor([[0, nz // 2, ny // 2, nx // 2], [0, nz // 2, ny // 2, nx // 2 + 1]], dtype=torch.int32)
    dummy = SparseVoxels(torch.randn(2, in_channels), coords, tuple(spatial_shape), 1,
                         tuple(voxel_size), tuple(point_range))
    was_training = backbone.training
    backbone.eval()
    try:
        out = backbone(dummy)
    finally:
        backbone.train(was_training)
    return tuple(out.spatial_shape), int(out.features.shape[1])


class Detector(nn.Module):
    """Single-stage CenterPoint-style detector; see the module docstring for the stages."""

    def __init__(self, voxelizer: Voxelizer, vfe: nn.Module, backbone_3d: nn.Module, to_bev: nn.Module,
                 backbone_2d: nn.Module, head: nn.Module, class_names: Sequence[str], point_features: Sequence[str]):
        super().__init__()
        self.voxelizer = voxelizer
        self.vfe = vfe
        self.backbone_3d = backbone_3d
        self.to_bev = to_bev
        self.backbone_2d = backbone_2d
        self.head = head
        self.class_names = tuple(class_names)
        self.point_features = tuple(point_features)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: dict) -> "Detector":
        """Build from a full loaded config (`dataset:` gives class_names / point_features / point_range)."""
        if "model" not in cfg:
            raise ValueError("config has no 'model' section")
        dataset = cfg.get("dataset", {})
        for key in ("class_names", "point_features"):
            if key not in dataset:
                raise ValueError(f"config dataset section needs {key!r}")
        model_cfg = copy.deepcopy(cfg["model"])
        vox = model_cfg.setdefault("voxelization", {})
        if "point_range" not in vox:
            if "point_range" not in dataset:
                raise ValueError("model.voxelization.point_range (or dataset.point_range) is required")
            vox["point_range"] = list(dataset["point_range"])
        return build_detector(model_cfg, dataset["class_names"], dataset["point_features"])

    # ---- stages -------------------------------------------------------------------------------
    def select_points(self, batch: Batch) -> torch.Tensor:
        """`(N, 1 + C)` batch points with the config's `point_features` columns, in that order."""
        names = tuple(batch.feature_names)
        missing = [n for n in self.point_features if n not in names]
        if missing:
            raise ValueError(f"the model reads point features {list(self.point_features)} but the batch only has "
                             f"{list(names)} (missing {missing})")
        if batch.points.ndim != 2 or batch.points.shape[1] != len(names) + 1:
            raise ValueError(f"batch.points must be (N, 1 + {len(names)}), got {tuple(batch.points.shape)}")
        columns = [0] + [1 + names.index(n) for n in self.point_features]
        return batch.points[:, columns].float()

    def voxelize(self, batch: Batch) -> VoxelizedPoints:
        """Pre-processing (no parameters): points -> voxel coordinates + point/voxel map."""
        return self.voxelizer(self.select_points(batch), batch.batch_size)

    def bev_shape(self) -> tuple[int, int]:
        return tuple(self.to_bev.spatial_shape[1:])

    def forward_voxels(self, voxelized: VoxelizedPoints) -> list[HeadPrediction]:
        """The network: voxelized points -> per-class-group head outputs `(B, ., H, W)`."""
        features = self.vfe(voxelized)
        voxels = SparseVoxels(features, voxelized.coords, self.voxelizer.spatial_shape, voxelized.batch_size,
                              self.voxelizer.voxel_size, self.voxelizer.point_range)
        if len(voxels) == 0:
            # Empty frames: nothing to attend to / convolve; the BEV map is all zeros.
            ny, nx = self.bev_shape()
            bev = features.new_zeros(voxelized.batch_size, self.to_bev.out_channels, ny, nx)
        else:
            bev = self.to_bev(self.backbone_3d(voxels))
        return self.head(self.backbone_2d(bev))

    def decode(self, predictions: list[HeadPrediction], voxelized: VoxelizedPoints) -> list[Boxes3D]:
        """Boxes per sample; a sample without a single voxel in range has no detections by definition
        (its all-zero BEV would otherwise decode to bias-only peaks)."""
        boxes = self.head.decode(predictions)
        # marked on the voxels' device: one copy of B flags to the host, not of every voxel's sample index
        occupied = torch.zeros(voxelized.batch_size, dtype=torch.bool, device=voxelized.coords.device)
        occupied[voxelized.coords[:, 0].long()] = True
        occupied = occupied.tolist()
        return [b if occupied[i] else b[:0] for i, b in enumerate(boxes)]

    def forward(self, batch: Batch):
        voxelized = self.voxelize(batch)
        predictions = self.forward_voxels(voxelized)
        if self.training:
            if any(b is None for b in batch.gt_boxes):
                raise ValueError("training needs gt_boxes for every sample (an empty Boxes3D for no objects)")
            parts = self.head.loss(predictions, batch.gt_boxes)
            return DetectorLoss(sum(parts.values()), parts)
        return self.decode(predictions, voxelized)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Boxes3D]:
        """Eval-mode inference regardless of the current mode (restored afterwards)."""
        was_training = self.training
        self.eval()
        try:
            voxelized = self.voxelize(batch)
            return self.decode(self.forward_voxels(voxelized), voxelized)
        finally:
            self.train(was_training)


def build_detector(model_cfg: dict, class_names: Sequence[str], point_features: Sequence[str]) -> Detector:
    """Build a `Detector` from the `model:` block (see module docstring)."""
    model_cfg = copy.deepcopy(dict(model_cfg))
    unknown = set(model_cfg) - set(_MODEL_KEYS)
    if unknown:
        raise ValueError(f"model: unknown section(s) {sorted(unknown)}; allowed: {list(_MODEL_KEYS)}")
    if "head" not in model_cfg:
        raise ValueError("model.head is required")
    point_features = tuple(point_features)
    if point_features[:3] != ("x", "y", "z"):
        raise ValueError(f"point_features must start with x, y, z, got {list(point_features)}")
    vox = dict(model_cfg.get("voxelization") or {})
    if "voxel_size" not in vox or "point_range" not in vox:
        raise ValueError("model.voxelization needs voxel_size and point_range")
    voxelizer = Voxelizer(**vox)
    vfe = build_vfe(model_cfg.get("vfe"), len(point_features), voxelizer.voxel_size, voxelizer.point_range,
                    voxelizer.mode)
    backbone_3d = _build_backbone_3d(model_cfg.get("backbone_3d"), vfe.out_channels)
    out_grid, out_channels = _probe_output_grid(backbone_3d, vfe.out_channels, voxelizer.spatial_shape,
                                                voxelizer.voxel_size, voxelizer.point_range)
    to_bev = build_to_bev(model_cfg.get("to_bev"), out_channels, out_grid)
    backbone_2d = build_backbone_2d(model_cfg.get("backbone_2d"), to_bev.out_channels)
    nx_in, nx_out = voxelizer.spatial_shape[2], out_grid[2]
    if nx_in % nx_out or voxelizer.spatial_shape[1] % out_grid[1]:
        raise ValueError(f"backbone_3d output grid {out_grid} does not divide the voxel grid {voxelizer.spatial_shape}")
    stride = (nx_in // nx_out) * backbone_2d.stride
    if stride.denominator != 1:
        raise ValueError(f"the BEV map's stride (3D backbone x{nx_in // nx_out}, 2D backbone x{stride / (nx_in // nx_out)}) "
                         "must be a whole number of voxels")
    stride = int(stride)
    head = build_head(model_cfg["head"], backbone_2d.out_channels, class_names, voxelizer.voxel_size,
                      voxelizer.point_range, stride)
    return Detector(voxelizer, vfe, backbone_3d, to_bev, backbone_2d, head, class_names, point_features)


def load_checkpoint(model: nn.Module, path, map_location="cpu") -> dict:
    """Load a checkpoint's inference weights into `model` through `pc3d.checkpoint` (safe loading, `ema` when
    present, strict keys with a short mismatch summary). Returns the whole checkpoint dict."""
    from pc3d.checkpoint import inference_weights, load_checkpoint as read_checkpoint, load_model_weights

    checkpoint = read_checkpoint(path)
    load_model_weights(model, inference_weights(checkpoint), str(path))  # copied onto the model's own device
    return checkpoint
