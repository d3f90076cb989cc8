"""CenterPoint decoding: heatmap peaks -> boxes, score threshold, optional IoU rectification, NMS."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pc3d.models.heads.targets import BoxCoder, MapGeometry


@dataclass(frozen=True)
class DecodeConfig:
    """score_threshold: keep peaks above it; pre_max_size: peaks kept per group before NMS;
    post_max_size: boxes kept per group after NMS; nms_type: "rotated" | "circle" | "none";
    iou_threshold: rotated BEV IoU threshold; circle_radius: metres (circle NMS);
    iou_rectifier: per-class alpha in `score^(1-a) * iou^a` (None disables);
    post_center_range: `(x_min, y_min, z_min, x_max, y_max, z_max)` for decoded centres (None: off);
    size_clamp: cap on the log-size codes before `exp` (None: no cap, OpenPCDet's decode);
    nms_swap_dims: NMS measures the BEV IoU of every box with its length and width exchanged (DSVT's
    `multi_class_nms`: mmdet3d's BEV NMS fed `pi/2 - yaw` without swapping the sizes turns each box by 90
    degrees about its centre); the decoded boxes themselves are unchanged. False: the true rotated IoU."""

    score_threshold: float = 0.1
    pre_max_size: int = 4096
    post_max_size: int = 500
    nms_type: str = "rotated"
    iou_threshold: float | tuple[float, ...] = 0.7
    circle_radius: float = 1.0
    iou_rectifier: tuple[float, ...] | None = None
    post_center_range: tuple[float, ...] | None = None
    size_clamp: float | None = 6.0
    nms_swap_dims: bool = False

    def __post_init__(self):
        # a NaN threshold compares False with every score (keeps nothing, silently); an IoU threshold
        # outside [0, 1] suppresses everything or nothing: refuse them, naming the config key
        def unit(value, key):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0.0 <= value <= 1.0:
                raise ValueError(f"head.decode.{key} must be a number in [0, 1], got {value!r}")
        unit(self.score_threshold, "score_threshold")
        for value in (self.iou_threshold if isinstance(self.iou_threshold, tuple) else (self.iou_threshold,)):
            unit(value, "nms.iou_threshold")
        if not math.isfinite(self.circle_radius) or self.circle_radius < 0:
            raise ValueError(f"head.decode.nms.radius must be a finite number >= 0, got {self.circle_radius!r}")
        for key in ("pre_max_size", "post_max_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"head.decode.{key} must be an integer >= 1, got {value!r}")
        for alpha in self.iou_rectifier or ():
            unit(alpha, "iou_rectification (alpha)")
        if self.post_center_range is not None and (len(self.post_center_range) != 6 or not all(
                math.isfinite(float(v)) for v in self.post_center_range)):
            raise ValueError(f"head.decode.post_center_range must be 6 finite numbers, got {self.post_center_range!r}")

    @classmethod
    def from_dict(cls, cfg: dict | None) -> "DecodeConfig":
        cfg = dict(cfg or {})
        nms = dict(cfg.pop("nms", {}) or {"type": "none"})
        kwargs = {}
        for key in ("score_threshold", "pre_max_size", "post_max_size"):
            if key in cfg:
                kwargs[key] = cfg.pop(key)
        if "size_clamp" in cfg:
            value = cfg.pop("size_clamp")
            kwargs["size_clamp"] = float(value) if value is not None else None
        if "post_center_range" in cfg:
            value = cfg.pop("post_center_range")
            kwargs["post_center_range"] = tuple(value) if value is not None else None
        if cfg:
            raise ValueError(f"head.decode: unknown options {sorted(cfg)}")
        kind = nms.pop("type", "rotated")
        if kind not in ("rotated", "circle", "none"):
            raise ValueError(f"head.decode.nms.type must be rotated, circle or none, got {kind!r}")
        kwargs["nms_type"] = kind
        if "iou_threshold" in nms:
            value = nms.pop("iou_threshold")
            kwargs["iou_threshold"] = (tuple(float(v) for v in value) if isinstance(value, (list, tuple))
                                       else float(value))
        if "radius" in nms:
            kwargs["circle_radius"] = float(nms.pop("radius"))
        if "swap_dims" in nms:
            kwargs["nms_swap_dims"] = bool(nms.pop("swap_dims"))
        if nms:
            raise ValueError(f"head.decode.nms: unknown options {sorted(nms)}")
        return cls(**kwargs)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """Indices kept, score-descending. A per-class threshold list runs NMS separately per class."""
    if cfg.nms_type == "none" or boxes.shape[0] == 0:
        return torch.argsort(scores, descending=True)[:cfg.post_max_size]
    from pc3d.ops import box_geometry  # imported here: only decoding needs it
    if cfg.nms_swap_dims:
        boxes = boxes[:, [0, 1, 2, 4, 3, 5, 6]]
    if cfg.nms_type == "circle":
        keep = box_geometry.nms_circle(boxes[:, :7], scores, cfg.circle_radius, post_max_size=cfg.post_max_size)
        return torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
    if not isinstance(cfg.iou_threshold, tuple):
        keep = box_geometry.nms_rotated(boxes[:, :7], scores, cfg.iou_threshold, post_max_size=cfg.post_max_size)
        return torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
    kept = []
    for label in labels.unique().tolist():
        if label >= len(cfg.iou_threshold):
            raise ValueError(f"head.decode.nms.iou_threshold has {len(cfg.iou_threshold)} values, class {label} has none")
        rows = torch.nonzero(labels == label)[:, 0]
        keep = box_geometry.nms_rotated(boxes[rows, :7], scores[rows], cfg.iou_threshold[label],
                                        post_max_size=cfg.post_max_size)
        kept.append(rows[torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)])
    kept = torch.cat(kept)
    return kept[torch.argsort(scores[kept], descending=True)][:cfg.post_max_size]


def decode_group(heatmap: torch.Tensor, codes: torch.Tensor, iou: torch.Tensor | None, group_labels: list[int],
                 coder: BoxCoder, geometry: MapGeometry, cfg: DecodeConfig):
    """One class group, whole batch.

    heatmap `(B, K, H, W)` logits; codes `(B, code_size, H, W)`; iou `(B, 1, H, W)` in [-1, 1] or None.
    Returns per sample `(boxes (M, 7|9), scores (M,), labels (M,) dataset class indices)`.
    """
    b, k, h, w = heatmap.shape
    scores_all = torch.sigmoid(heatmap.float()).reshape(b, -1)
    labels_of = torch.as_tensor(group_labels, dtype=torch.int64, device=heatmap.device)
    out = []
    for sample in range(b):
        top = min(cfg.pre_max_size, scores_all.shape[1])
        scores, flat = torch.topk(scores_all[sample], top)
        keep = scores > cfg.score_threshold
        scores, flat = scores[keep], flat[keep]
        cls = torch.div(flat, h * w, rounding_mode="floor")
        cell = flat % (h * w)
        rows, cols = torch.div(cell, w, rounding_mode="floor"), cell % w
        sample_codes = codes[sample].reshape(codes.shape[1], -1)[:, cell].t().float()
        boxes = coder.decode(sample_codes, cols, rows, geometry, size_clamp=cfg.size_clamp)
        if iou is not None and cfg.iou_rectifier is not None:
            alpha = torch.as_tensor(cfg.iou_rectifier, dtype=scores.dtype, device=scores.device)[labels_of[cls]]
            pred_iou = ((iou[sample, 0].reshape(-1)[cell].float() + 1) / 2).clamp(0, 1)
            scores = scores.pow(1 - alpha) * pred_iou.pow(alpha)
        if cfg.post_center_range is not None:
            r = torch.as_tensor(cfg.post_center_range, dtype=boxes.dtype, device=boxes.device)
            inside = ((boxes[:, :3] >= r[:3]) & (boxes[:, :3] <= r[3:])).all(1)
            boxes, scores, cls = boxes[inside], scores[inside], cls[inside]
        keep = _nms(boxes, scores, labels_of[cls], cfg)
        out.append((boxes[keep], scores[keep], labels_of[cls[keep]]))
    return out
