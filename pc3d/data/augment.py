"""LiDAR training augmentation applied consistently to points and boxes.

Global flip (about the x and/or y axis), rotation about z, uniform scaling and translation, as in
OpenPCDet / CenterPoint / DSVT. Randomness is drawn from a generator seeded by
(seed, epoch, frame id), so a run is reproducible and a resumed run sees exactly the same
augmentations as an uninterrupted one, whatever the worker layout.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from pc3d.structures import Frame, PointCloud


def _wrap_angle(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def rotate_frame(frame: Frame, angle: float) -> Frame:
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float32)
    pts = frame.points.points.clone()
    pts[:, :2] = pts[:, :2] @ rot.T
    boxes = frame.gt_boxes
    if boxes is not None and len(boxes):
        b = boxes.boxes.clone()
        b[:, :2] = b[:, :2] @ rot.T
        b[:, 6] = _wrap_angle(b[:, 6] + angle)
        if boxes.has_velocity:
            b[:, 7:9] = b[:, 7:9] @ rot.T
        boxes = replace(boxes, boxes=b)
    return replace(frame, points=PointCloud(pts, frame.points.feature_names), gt_boxes=boxes)


def flip_frame(frame: Frame, axis: str) -> Frame:
    """axis 'x': mirror y -> -y (flip about the x axis); axis 'y': mirror x -> -x."""
    col = 1 if axis == "x" else 0
    pts = frame.points.points.clone()
    pts[:, col] = -pts[:, col]
    boxes = frame.gt_boxes
    if boxes is not None and len(boxes):
        b = boxes.boxes.clone()
        b[:, col] = -b[:, col]
        b[:, 6] = _wrap_angle(-b[:, 6] if axis == "x" else math.pi - b[:, 6])
        if boxes.has_velocity:
            b[:, 7 + col] = -b[:, 7 + col]
        boxes = replace(boxes, boxes=b)
    return replace(frame, points=PointCloud(pts, frame.points.feature_names), gt_boxes=boxes)


def scale_translate_frame(frame: Frame, scale: float, shift: np.ndarray) -> Frame:
    pts = frame.points.points.clone()
    pts[:, :3] = pts[:, :3] * scale + torch.as_tensor(shift, dtype=torch.float32)
    boxes = frame.gt_boxes
    if boxes is not None and len(boxes):
        b = boxes.boxes.clone()
        b[:, :6] *= scale
        b[:, :3] += torch.as_tensor(shift, dtype=torch.float32)
        if boxes.has_velocity:
            b[:, 7:9] *= scale
        boxes = replace(boxes, boxes=b)
    return replace(frame, points=PointCloud(pts, frame.points.feature_names), gt_boxes=boxes)


@dataclass
class GlobalAugmentation:
    """Callable `Frame -> Frame`. Set `epoch` before each epoch (the trainer does)."""

    rotation: tuple[float, float] = (-math.pi / 4, math.pi / 4)
    scale: tuple[float, float] = (0.95, 1.05)
    flip_x: bool = True
    flip_y: bool = True
    translation_std: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seed: int = 0
    epoch: int = 0

    @classmethod
    def from_config(cls, cfg: dict | None, seed: int) -> "GlobalAugmentation | None":
        if not cfg:
            return None
        from pc3d.config import require_keys
        require_keys(cfg, ("rotation", "scale", "flip_x", "flip_y", "translation_std"), "train.augment")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}, seed=seed)

    def __call__(self, frame: Frame) -> Frame:
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(frame.frame_id.encode())])
        if self.flip_x and rng.random() < 0.5:
            frame = flip_frame(frame, "x")
        if self.flip_y and rng.random() < 0.5:
            frame = flip_frame(frame, "y")
        frame = rotate_frame(frame, float(rng.uniform(*self.rotation)))
        shift = rng.normal(0.0, 1.0, size=3) * np.asarray(self.translation_std)
        return scale_translate_frame(frame, float(rng.uniform(*self.scale)), shift)
