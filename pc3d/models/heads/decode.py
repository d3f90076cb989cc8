"""CenterPoint decoding: heatmap peaks -> boxes, score threshold, optional IoU rectification, NMS."""
from __future__ import annotations

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
    size_clamp: cap on the log-size codes before `exp` (None: no cap, OpenPCDet's decode)."""

    score_threshold: float = 0.1
    pre_max_size: int = 4096
    post_max_size: int = 500
    nms_type: str = "rotated"
    iou_threshold: float | tuple[float, ...] = 0.7
    circle_radius: float = 1.0
    iou_rectifier: tuple[float, ...] | None = None
    post_center_range: tuple[float, ...] | None = None
    size_clamp: float | None = 6.0

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
        if nms:
            raise ValueError(f"head.decode.nms: unknown options {sorted(nms)}")
        return cls(**kwargs)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """Indices kept, score-descending. A per-class threshold list runs NMS separately per class."""
    if cfg.nms_type == "none" or boxes.shape[0] == 0:
        return torch.argsort(scores, descending=True)[:cfg.post_max_size]
    from pc3d.ops import box_geometry  # imported here: only decoding needs it
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
