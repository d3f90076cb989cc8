"""CenterPoint training targets: Gaussian heatmaps and regression targets at object centres.

Geometry of the head's feature map: cell `(row j, col i)` covers
`x in [x_min + i * sx, x_min + (i + 1) * sx)`, `y in [y_min + j * sy, ...)` with
`(sx, sy) = voxel_size[:2] * stride`.

Regression code per object (`BoxCoder`), in this order:
`offset_x, offset_y` (centre minus the integer cell, in cells), `z` (metres), `log dx, log dy, log dz`,
`sin heading, cos heading` and optionally `vx, vy` (m/s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pc3d.structures import Boxes3D


def gaussian_radius(height: float, width: float, min_overlap: float = 0.1) -> float:
    """CenterNet / CenterPoint radius rule for a box of `height x width` cells.

    The largest radius such that a corner-shifted box still has IoU >= `min_overlap` with the
    GT box, the minimum over CenterNet's three cases (both corners inside, both outside, one each).
    Kept exactly as CenterPoint uses it (including its un-halved discriminant), since the published
    min_radius / overlap settings were tuned for it.
    """
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4 * a1 * c1, 0.0))) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(max(b2 * b2 - 4 * a2 * c2, 0.0))) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(max(b3 * b3 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def gaussian_kernel(radius: int) -> np.ndarray:
    """`(2r+1, 2r+1)` Gaussian with sigma = (2r+1)/6 and value 1 at the centre."""
    sigma = (2 * radius + 1) / 6.0
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    kernel = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(kernel.dtype).eps * kernel.max()] = 0
    return kernel


def draw_gaussian(heatmap: np.ndarray, col: int, row: int, radius: int) -> None:
    """Max-blend a Gaussian of `radius` cells centred on cell (row, col) into `heatmap (H, W)`, in place."""
    kernel = gaussian_kernel(radius)
    height, width = heatmap.shape
    left, right = min(col, radius), min(width - col, radius + 1)
    top, bottom = min(row, radius), min(height - row, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return
    region = heatmap[row - top:row + bottom, col - left:col + right]
    patch = kernel[radius - top:radius + bottom, radius - left:radius + right]
    np.maximum(region, patch, out=region)


@dataclass(frozen=True)
class MapGeometry:
    """Where the head's feature map sits in the world."""

    voxel_size: tuple[float, float, float]
    point_range: tuple[float, float, float, float, float, float]
    stride: int
    shape: tuple[int, int]  # (H, W)

    @property
    def cell_size(self) -> tuple[float, float]:
        return (self.voxel_size[0] * self.stride, self.voxel_size[1] * self.stride)


class BoxCoder:
    """Box `(x, y, z, dx, dy, dz, heading[, vx, vy])` <-> (cell, regression code)."""

    def __init__(self, with_velocity: bool):
        self.with_velocity = with_velocity
        self.code_size = 10 if with_velocity else 8

    def encode(self, boxes: np.ndarray, geometry: MapGeometry):
        """boxes `(M, 7|9)` -> (cols `(M,)`, rows `(M,)` int, codes `(M, code_size)` float32)."""
        sx, sy = geometry.cell_size
        fx = (boxes[:, 0] - geometry.point_range[0]) / sx
        fy = (boxes[:, 1] - geometry.point_range[1]) / sy
        cols, rows = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
        parts = [fx - cols, fy - rows, boxes[:, 2], np.log(np.maximum(boxes[:, 3:6], 1e-3)).T,
                 np.sin(boxes[:, 6]), np.cos(boxes[:, 6])]
        if self.with_velocity:
            vel = boxes[:, 7:9] if boxes.shape[1] >= 9 else np.zeros((len(boxes), 2))
            parts.append(np.nan_to_num(vel).T)
        codes = np.vstack([np.atleast_2d(p) for p in parts]).T.astype(np.float32)
        return cols, rows, codes

    def decode(self, codes: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor, geometry: MapGeometry,
               size_clamp: float | None = 6.0) -> torch.Tensor:
        """codes `(K, code_size)` at cells (cols, rows) `(K,)` -> boxes `(K, 7|9)`.

        `size_clamp` caps the log-size codes before `exp` (pc3d's guard against overflow early in training);
        None decodes `exp` unclamped, as OpenPCDet's CenterHead does."""
        sx, sy = geometry.cell_size
        x = (cols.to(codes.dtype) + codes[:, 0]) * sx + geometry.point_range[0]
        y = (rows.to(codes.dtype) + codes[:, 1]) * sy + geometry.point_range[1]
        log_size = codes[:, 3:6] if size_clamp is None else codes[:, 3:6].clamp(max=size_clamp)
        size = torch.exp(log_size)
        heading = torch.atan2(codes[:, 6], codes[:, 7])
        parts = [x[:, None], y[:, None], codes[:, 2:3], size, heading[:, None]]
        if self.with_velocity:
            parts.append(codes[:, 8:10])
        return torch.cat(parts, dim=1)


@dataclass
class GroupTargets:
    """Targets of one class group.

    heatmap: `(B, K_group, H, W)` in [0, 1] (1 exactly at object centres);
    index: `(B, max_objs)` int64 flat `row * W + col` of each object's centre cell;
    mask: `(B, max_objs)` bool (valid object slots);
    codes: `(B, max_objs, code_size)` regression targets; boxes: `(B, max_objs, 7)` GT boxes
    (for the IoU branch).
    """

    heatmap: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    codes: torch.Tensor
    boxes: torch.Tensor


def assign_targets(gt_boxes: Sequence[Boxes3D | None], class_groups: Sequence[Sequence[int]], geometry: MapGeometry,
                   coder: BoxCoder, min_radius: int = 2, gaussian_overlap: float = 0.1,
                   max_objs: int = 500, device=None) -> list[GroupTargets]:
    """CenterPoint target assignment for every class group (labels are indices into the dataset's classes).

    A box whose centre falls outside the map is ignored; a cell claimed by two boxes of the same
    group keeps both heatmap peaks but regresses the later one (as CenterPoint).
    """
    height, width = geometry.shape
    sx, sy = geometry.cell_size
    batch = len(gt_boxes)
    out = []
    for group in class_groups:
        group = list(group)
        heat = np.zeros((batch, len(group), height, width), np.float32)
        index = np.zeros((batch, max_objs), np.int64)
        mask = np.zeros((batch, max_objs), bool)
        codes = np.zeros((batch, max_objs, coder.code_size), np.float32)
        boxes_out = np.zeros((batch, max_objs, 7), np.float32)
        for b, gt in enumerate(gt_boxes):
            if gt is None or len(gt) == 0:
                continue
            if coder.with_velocity and not gt.has_velocity:
                raise ValueError(f"the head regresses velocity but sample {b}'s gt_boxes are (M, 7); "
                                 "give (M, 9) boxes with (vx, vy) or set head.regression.velocity: 0")
            boxes = gt.boxes.detach().cpu().numpy().astype(np.float64)
            labels = gt.labels.detach().cpu().numpy()
            keep = np.isin(labels, group) & np.isfinite(boxes[:, :7]).all(1) & (boxes[:, 3:6] > 0).all(1)
            boxes, labels = boxes[keep], labels[keep]
            cols, rows, box_codes = coder.encode(boxes, geometry)
            slot = 0
            for k in range(len(boxes)):
                col, row = int(cols[k]), int(rows[k])
                if not (0 <= col < width and 0 <= row < height) or slot >= max_objs:
                    continue
                radius = gaussian_radius(boxes[k, 4] / sy, boxes[k, 3] / sx, gaussian_overlap)
                radius = max(int(min_radius), int(radius))
                draw_gaussian(heat[b, group.index(int(labels[k]))], col, row, radius)
                index[b, slot] = row * width + col
                mask[b, slot] = True
                codes[b, slot] = box_codes[k]
                boxes_out[b, slot] = boxes[k, :7]
                slot += 1
        out.append(GroupTargets(*(torch.from_numpy(a).to(device) for a in (heat, index, mask, codes, boxes_out))))
    return out
