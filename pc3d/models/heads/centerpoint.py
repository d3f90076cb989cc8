"""CenterPoint head: class-grouped heatmaps + per-cell box regression on the BEV map.

`CenterPointHead.forward(bev (B, C, H, W)) -> list[HeadPrediction]` (one per class group),
`.loss(predictions, gt_boxes) -> dict[str, Tensor]`, `.decode(predictions) -> list[Boxes3D]`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn

from pc3d.models.heads.decode import DecodeConfig, decode_group
from pc3d.models.heads.losses import gather_at, gaussian_focal_loss, masked_l1_loss
from pc3d.models.heads.targets import BoxCoder, MapGeometry, assign_targets
from pc3d.structures import Boxes3D

# Branch widths are fixed by the box coder; the config's `regression` block must agree with them.
_REGRESSION = {"offset": 2, "height": 1, "size": 3, "heading": 2}


@dataclass
class HeadPrediction:
    """Raw outputs of one class group, all `(B, ., H, W)`: heatmap logits `(B, K_group)`, offset (2),
    height (1), size (3, log metres), heading (2, sin/cos), velocity (2) or None, iou (1, in [-1, 1]) or None."""

    heatmap: torch.Tensor
    offset: torch.Tensor
    height: torch.Tensor
    size: torch.Tensor
    heading: torch.Tensor
    velocity: torch.Tensor | None = None
    iou: torch.Tensor | None = None

    def codes(self) -> torch.Tensor:
        """Regression code map `(B, code_size, H, W)` in `BoxCoder` order."""
        parts = [self.offset, self.height, self.size, self.heading]
        if self.velocity is not None:
            parts.append(self.velocity)
        return torch.cat(parts, dim=1)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The non-None outputs in field order (for export)."""
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)


def _branch(channels: int, out: int, num_conv: int, bias_init: float | None, norm: "NormSpec") -> nn.Sequential:
    layers = []
    for _ in range(num_conv - 1):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=norm.conv_bias),
                   nn.BatchNorm2d(channels, eps=norm.eps, momentum=norm.momentum), nn.ReLU(inplace=True)]
    final = nn.Conv2d(channels, out, 3, padding=1, bias=True)
    if bias_init is not None:
        nn.init.constant_(final.bias, bias_init)
    else:
        nn.init.kaiming_normal_(final.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(final.bias)
    layers.append(final)
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class NormSpec:
    """BatchNorm of the head's hidden convs: pc3d's default (eps 1e-3, momentum 0.01, conv without bias)
    or OpenPCDet's CenterHead (`BN_EPS` 1e-5, `BN_MOM` 0.1, `USE_BIAS_BEFORE_NORM` conv bias)."""

    eps: float = 1e-3
    momentum: float = 0.01
    conv_bias: bool = False

    @classmethod
    def from_dict(cls, cfg: dict | None) -> "NormSpec":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"eps", "momentum", "conv_bias"}
        if unknown:
            raise ValueError(f"head.norm: unknown options {sorted(unknown)} (eps, momentum, conv_bias)")
        return cls(float(cfg.get("eps", 1e-3)), float(cfg.get("momentum", 0.01)), bool(cfg.get("conv_bias", False)))


class SeparateHead(nn.Module):
    """One conv branch per output of a class group."""

    def __init__(self, channels: int, num_classes: int, with_velocity: bool, with_iou: bool, num_conv: int = 2,
                 norm: NormSpec = NormSpec()):
        super().__init__()
        # -2.19 = logit(0.1): a low prior on every cell keeps the early focal loss stable (CenterNet).
        self.heatmap = _branch(channels, num_classes, num_conv, -2.19, norm)
        self.offset = _branch(channels, 2, num_conv, None, norm)
        self.height = _branch(channels, 1, num_conv, None, norm)
        self.size = _branch(channels, 3, num_conv, None, norm)
        self.heading = _branch(channels, 2, num_conv, None, norm)
        self.velocity = _branch(channels, 2, num_conv, None, norm) if with_velocity else None
        self.iou = _branch(channels, 1, num_conv, None, norm) if with_iou else None

    def forward(self, x: torch.Tensor) -> HeadPrediction:
        return HeadPrediction(
            heatmap=self.heatmap(x), offset=self.offset(x), height=self.height(x), size=self.size(x),
            heading=self.heading(x), velocity=self.velocity(x) if self.velocity is not None else None,
            iou=self.iou(x) if self.iou is not None else None)


class CenterPointHead(nn.Module):
    """Args:
        in_channels: BEV channels; class_names: the dataset's classes (label order);
        class_groups: list of lists of class names, one heatmap group each;
        voxel_size, point_range: the voxel grid; stride: BEV cell size / voxel size;
        heatmap: {min_radius, gaussian_overlap, max_objs}; with_velocity; iou_rectification: False or
        per-class alphas (list, dataset order) — adds an IoU branch and rectifies scores with it;
        loss_weights: {heatmap, regression, iou, code_weights}; decode: see `DecodeConfig`;
        norm: {eps, momentum, conv_bias} of the hidden convs (see `NormSpec`; default pc3d's).
    """

    def __init__(self, in_channels: int, class_names: Sequence[str], class_groups: Sequence[Sequence[str]],
                 voxel_size: Sequence[float], point_range: Sequence[float], stride: int = 1,
                 shared_channels: int = 64, num_conv: int = 2, heatmap: dict | None = None,
                 with_velocity: bool = False, iou_rectification=False, loss_weights: dict | None = None,
                 decode: dict | None = None, norm: dict | None = None):
        super().__init__()
        self.class_names = tuple(class_names)
        for group in class_groups:
            for name in group:
                if name not in self.class_names:
                    raise ValueError(f"head.class_groups names {name!r}, which is not a class: {list(class_names)}")
        flat = [n for g in class_groups for n in g]
        if len(set(flat)) != len(flat):
            raise ValueError(f"head.class_groups lists a class twice: {class_groups}")
        self.class_groups = [[self.class_names.index(n) for n in g] for g in class_groups]
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_range = tuple(float(v) for v in point_range)
        self.stride = int(stride)
        heatmap = dict(heatmap or {})
        self.min_radius = int(heatmap.pop("min_radius", 2))
        self.gaussian_overlap = float(heatmap.pop("gaussian_overlap", 0.1))
        self.max_objs = int(heatmap.pop("max_objs", 500))
        if heatmap:
            raise ValueError(f"head.heatmap: unknown options {sorted(heatmap)}")
        self.coder = BoxCoder(with_velocity)
        if iou_rectification is True:
            iou_rectification = [0.5] * len(self.class_names)
        self.with_iou = bool(iou_rectification)
        if self.with_iou and len(iou_rectification) != len(self.class_names):
            raise ValueError(f"head.iou_rectification needs one alpha per class ({len(self.class_names)}), "
                             f"got {iou_rectification}")
        weights = dict(loss_weights or {})
        self.heatmap_weight = float(weights.pop("heatmap", 1.0))
        self.regression_weight = float(weights.pop("regression", 2.0))
        self.iou_weight = float(weights.pop("iou", 1.0))
        code_weights = weights.pop("code_weights", None) or [1.0] * self.coder.code_size
        if weights:
            raise ValueError(f"head.loss_weights: unknown options {sorted(weights)}")
        if len(code_weights) != self.coder.code_size:
            raise ValueError(f"head.loss_weights.code_weights needs {self.coder.code_size} values "
                             f"(offset 2, height 1, size 3, heading 2{', velocity 2' if with_velocity else ''}), "
                             f"got {len(code_weights)}")
        self.register_buffer("code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False)
        decode_cfg = DecodeConfig.from_dict(decode)
        if self.with_iou:
            decode_cfg = DecodeConfig(**{**decode_cfg.__dict__, "iou_rectifier": tuple(float(a) for a in iou_rectification)})
        self.decode_cfg = decode_cfg

        norm_spec = NormSpec.from_dict(norm)
        self.shared = nn.Sequential(nn.Conv2d(in_channels, shared_channels, 3, padding=1, bias=norm_spec.conv_bias),
                                    nn.BatchNorm2d(shared_channels, eps=norm_spec.eps, momentum=norm_spec.momentum),
                                    nn.ReLU(inplace=True))
        self.groups = nn.ModuleList(SeparateHead(shared_channels, len(g), with_velocity, self.with_iou, num_conv,
                                                 norm_spec) for g in self.class_groups)

    @property
    def with_velocity(self) -> bool:
        return self.coder.with_velocity

    def geometry(self, predictions: list[HeadPrediction]) -> MapGeometry:
        h, w = predictions[0].heatmap.shape[-2:]
        return MapGeometry(self.voxel_size, self.point_range, self.stride, (int(h), int(w)))

    def forward(self, bev: torch.Tensor) -> list[HeadPrediction]:
        x = self.shared(bev)
        return [group(x) for group in self.groups]

    def loss(self, predictions: list[HeadPrediction], gt_boxes: Sequence[Boxes3D | None]) -> dict[str, torch.Tensor]:
        """Weighted losses: `heatmap`, `regression` and (IoU branch) `iou`, summed over groups."""
        geometry = self.geometry(predictions)
        device = predictions[0].heatmap.device
        targets = assign_targets(gt_boxes, self.class_groups, geometry, self.coder, self.min_radius,
                                 self.gaussian_overlap, self.max_objs, device=device)
        heat_loss = predictions[0].heatmap.new_zeros(())
        reg_loss = heat_loss.clone()
        iou_loss = heat_loss.clone()
        for pred, target in zip(predictions, targets):
            heat_loss = heat_loss + gaussian_focal_loss(pred.heatmap, target.heatmap)
            codes = gather_at(pred.codes(), target.index)
            reg_loss = reg_loss + masked_l1_loss(codes, target.codes, target.mask, self.code_weights)
            if pred.iou is not None:
                iou_loss = iou_loss + self._iou_loss(pred, codes, target, geometry)
        losses = {"heatmap": self.heatmap_weight * heat_loss, "regression": self.regression_weight * reg_loss}
        if self.with_iou:
            losses["iou"] = self.iou_weight * iou_loss
        return losses

    def _iou_loss(self, pred: HeadPrediction, codes: torch.Tensor, target, geometry: MapGeometry) -> torch.Tensor:
        """L1 between the IoU branch and `2 * IoU3D(decoded box, GT) - 1` at object centres (target detached)."""
        mask = target.mask
        if not bool(mask.any()):
            return pred.iou.sum() * 0.0
        from pc3d.ops import box_geometry
        w = geometry.shape[1]
        index = target.index[mask]
        decoded = self.coder.decode(codes[mask].detach().float(), index % w, torch.div(index, w, rounding_mode="floor"),
                                    geometry)[:, :7]
        gt = target.boxes[mask]
        with torch.no_grad():
            # decoded box i against its own GT box i only (the diagonal of the dense matrix)
            iou = torch.as_tensor(box_geometry.box_iou_3d_paired(decoded, gt)).to(decoded)
        pred_iou = gather_at(pred.iou, target.index)[mask][:, 0]
        return (pred_iou - (2 * iou - 1)).abs().sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def decode(self, predictions: list[HeadPrediction]) -> list[Boxes3D]:
        geometry = self.geometry(predictions)
        batch = predictions[0].heatmap.shape[0]
        per_sample = [[] for _ in range(batch)]
        for pred, group in zip(predictions, self.class_groups):
            results = decode_group(pred.heatmap, pred.codes(), pred.iou, group, self.coder, geometry, self.decode_cfg)
            for sample, result in enumerate(results):
                per_sample[sample].append(result)
        out = []
        for parts in per_sample:
            # Boxes stay on the head's device: callers that need host tensors move them (evaluation does).
            boxes = torch.cat([p[0] for p in parts])
            scores = torch.cat([p[1] for p in parts])
            labels = torch.cat([p[2] for p in parts])
            out.append(Boxes3D(boxes, labels, self.class_names, scores))
        return out


def build_head(cfg: dict, in_channels: int, class_names: Sequence[str], voxel_size, point_range,
               stride: int) -> CenterPointHead:
    """`head: {type: centerpoint, class_groups, feature_stride, shared_channels, num_conv, heatmap, regression,
    iou_rectification, loss_weights, decode, norm}` (see `CenterPointHead`)."""
    cfg = dict(cfg)
    kind = cfg.pop("type", "centerpoint")
    if kind != "centerpoint":
        raise ValueError(f"unknown head type {kind!r} (centerpoint)")
    declared = cfg.pop("feature_stride", None)
    if declared is not None and int(declared) != stride:
        raise ValueError(f"head.feature_stride is {declared} but the network's BEV map has stride {stride} "
                         "(3D backbone downsampling x 2D backbone stride)")
    regression = dict(cfg.pop("regression", {}) or {})
    velocity = int(regression.pop("velocity", 0))
    for name, width in regression.items():
        if _REGRESSION.get(name) != int(width):
            raise ValueError(f"head.regression.{name}: CenterPoint regresses {_REGRESSION} (+ velocity 0 or 2), "
                             f"got {name}: {width}")
    if velocity not in (0, 2):
        raise ValueError(f"head.regression.velocity must be 0 or 2, got {velocity}")
    class_groups = cfg.pop("class_groups", None) or [list(class_names)]
    return CenterPointHead(in_channels, class_names, class_groups, voxel_size, point_range, stride,
                           with_velocity=velocity == 2, **cfg)
