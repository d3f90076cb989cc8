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

    def encode_tensor(self, boxes: torch.Tensor, geometry: MapGeometry):
        """`encode` with tensor ops on the boxes' device: float64 boxes `(M, 7|9)` -> (cols, rows int64,
        codes float32). Same float64 arithmetic as `encode`, rounded to float32 at the end."""
        sx, sy = geometry.cell_size
        fx = (boxes[:, 0] - geometry.point_range[0]) / sx
        fy = (boxes[:, 1] - geometry.point_range[1]) / sy
        cols, rows = torch.floor(fx), torch.floor(fy)
        parts = [(fx - cols)[:, None], (fy - rows)[:, None], boxes[:, 2:3],
                 torch.log(torch.clamp(boxes[:, 3:6], min=1e-3)), torch.sin(boxes[:, 6:7]), torch.cos(boxes[:, 6:7])]
        if self.with_velocity:
            vel = boxes[:, 7:9] if boxes.shape[1] >= 9 else boxes.new_zeros(len(boxes), 2)
            parts.append(torch.nan_to_num(vel))
        # int64 of a non-finite coordinate is unspecified; such boxes are masked out by the caller
        finite = torch.isfinite(fx) & torch.isfinite(fy)
        cols = torch.where(finite, cols, -1.0).clamp(-1.0, 2.0 ** 40).to(torch.int64)
        rows = torch.where(finite, rows, -1.0).clamp(-1.0, 2.0 ** 40).to(torch.int64)
        return cols, rows, torch.cat(parts, dim=1).to(torch.float32)

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


def gaussian_radius_tensor(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.1) -> torch.Tensor:
    """`gaussian_radius` for many boxes at once (float64 in, float64 out, the same operations in the same order).
    Equal to the scalar rule up to torch's vectorised CPU sqrt, which is not always correctly rounded (within
    1e-13 relative; CUDA's is exact): the whole-cell radii the targets use agree (tested)."""
    zero = height.new_zeros(())
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(torch.maximum(b1 * b1 - 4 * 1.0 * c1, zero))) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(torch.maximum(b2 * b2 - 4 * 4.0 * c2, zero))) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(torch.maximum(b3 * b3 - 4 * a3 * c3, zero))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def _gather_group_boxes(gt_boxes: Sequence[Boxes3D | None], coder: BoxCoder, device):
    """All samples' boxes concatenated on `device`: (boxes (M, 7|9) float64, labels (M,), sample (M,))."""
    boxes, labels, sample = [], [], []
    for b, gt in enumerate(gt_boxes):
        if gt is None or len(gt) == 0:
            continue
        if coder.with_velocity and not gt.has_velocity:
            raise ValueError(f"the head regresses velocity but sample {b}'s gt_boxes are (M, 7); "
                             "give (M, 9) boxes with (vx, vy) or set head.regression.velocity: 0")
        box = gt.boxes.detach().to(device=device, dtype=torch.float64)
        # (M, 9) for every sample: velocity columns are zero where a sample has none (unused then)
        boxes.append(box[:, :9] if box.shape[1] >= 9 else torch.nn.functional.pad(box[:, :7], (0, 2)))
        labels.append(gt.labels.detach().to(device=device, dtype=torch.int64))
        sample.append(torch.full((len(gt),), b, dtype=torch.int64, device=device))
    if not boxes:
        return None
    return torch.cat(boxes), torch.cat(labels), torch.cat(sample)


def assign_targets(gt_boxes: Sequence[Boxes3D | None], class_groups: Sequence[Sequence[int]], geometry: MapGeometry,
                   coder: BoxCoder, min_radius: int = 2, gaussian_overlap: float = 0.1,
                   max_objs: int = 500, device=None) -> list[GroupTargets]:
    """CenterPoint target assignment for every class group (labels are indices into the dataset's classes).

    A box whose centre falls outside the map is ignored; a cell claimed by two boxes of the same
    group keeps both heatmap peaks but regresses the later one (as CenterPoint).

    Built with tensor ops on `device` (default: the boxes' device), with no per-box Python loop and no
    data copied to the host (one size sync per group, for the number of heatmap cells painted): training on
    a GPU does not stall on its targets. The result equals the per-box numpy construction CenterPoint uses
    (kept in the tests as the reference), value for value.
    """
    height, width = geometry.shape
    batch = len(gt_boxes)
    if device is None:
        device = next((gt.boxes.device for gt in gt_boxes if gt is not None), torch.device("cpu"))
    device = torch.device(device)
    gathered = _gather_group_boxes(gt_boxes, coder, device)
    out = []
    for group in class_groups:
        group_t = torch.as_tensor(list(group), dtype=torch.int64, device=device)
        heat = torch.zeros(batch * len(group) * height * width + 1, dtype=torch.float32, device=device)
        # One spare slot per tensor: boxes that get no slot are written there and cut off at the end.
        index = torch.zeros(batch * max_objs + 1, dtype=torch.int64, device=device)
        mask = torch.zeros(batch * max_objs + 1, dtype=torch.bool, device=device)
        codes = torch.zeros(batch * max_objs + 1, coder.code_size, dtype=torch.float32, device=device)
        boxes_out = torch.zeros(batch * max_objs + 1, 7, dtype=torch.float32, device=device)
        if gathered is not None:
            boxes, labels, sample = gathered
            member = labels[:, None] == group_t[None, :]
            channel = member.to(torch.int64).argmax(1)
            keep = member.any(1) & torch.isfinite(boxes[:, :7]).all(1) & (boxes[:, 3:6] > 0).all(1)
            cols, rows, box_codes = coder.encode_tensor(boxes if coder.with_velocity else boxes[:, :7], geometry)
            valid = keep & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
            # slot = rank of the box among its sample's valid boxes, in input order
            count = valid.to(torch.int64)
            per_sample = torch.zeros(batch, dtype=torch.int64, device=device).index_add_(0, sample, count)
            first = torch.cumsum(per_sample, 0) - per_sample
            slot = torch.cumsum(count, 0) - 1 - first[sample]
            drawn = valid & (slot < max_objs)
            target = torch.where(drawn, sample * max_objs + slot, batch * max_objs)
            index[target] = torch.where(drawn, rows * width + cols, 0)
            mask[target] = drawn
            codes[target] = torch.where(drawn[:, None], box_codes, 0.0)
            boxes_out[target] = torch.where(drawn[:, None], boxes[:, :7], 0.0).to(torch.float32)
            _draw_gaussians(heat, boxes, sample * len(group) + channel, cols, rows, drawn, geometry,
                            min_radius, gaussian_overlap)
        out.append(GroupTargets(heat[:-1].view(batch, len(group), height, width),
                                index[:-1].view(batch, max_objs), mask[:-1].view(batch, max_objs),
                                codes[:-1].view(batch, max_objs, coder.code_size),
                                boxes_out[:-1].view(batch, max_objs, 7)))
    return out


def _draw_gaussians(heat: torch.Tensor, boxes: torch.Tensor, plane: torch.Tensor, cols: torch.Tensor,
                    rows: torch.Tensor, drawn: torch.Tensor, geometry: MapGeometry, min_radius: int,
                    gaussian_overlap: float) -> None:
    """Max-blend each drawn box's Gaussian into the flat heatmap `heat` (planes of H x W, one spare cell last).

    Every box expands into its own `(2r + 1)^2` window (ragged, `repeat_interleave`), so the work is the
    number of cells painted, whatever the spread of radii. `float32(max(a, b)) == max(a, float32(b))` for a
    float32 `a` (rounding is monotonic), so one `amax` scatter of the rounded kernel values gives the
    sequential float64 blend of `draw_gaussian`.
    """
    height, width = geometry.shape
    sx, sy = geometry.cell_size
    radius = gaussian_radius_tensor(boxes[:, 4] / sy, boxes[:, 3] / sx, gaussian_overlap)
    radius = torch.clamp(torch.trunc(torch.nan_to_num(radius)), min=int(min_radius)).to(torch.int64)
    radius = torch.where(drawn, radius, 0)
    side = 2 * radius + 1
    cells = torch.where(drawn, side * side, 0)
    owner = torch.repeat_interleave(torch.arange(len(boxes), device=heat.device), cells)
    if owner.numel() == 0:
        return
    local = torch.arange(owner.numel(), device=heat.device) - (torch.cumsum(cells, 0) - cells)[owner]
    r, s = radius[owner], side[owner]
    dy = torch.div(local, s, rounding_mode="floor") - r
    dx = local % s - r
    row, col = rows[owner] + dy, cols[owner] + dx
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    sigma = (2 * r + 1).to(torch.float64) / 6.0
    value = torch.exp(-(dx * dx + dy * dy).to(torch.float64) / (2 * sigma * sigma))
    # gaussian_kernel zeroes values below eps * max (max = 1, at the centre)
    value = torch.where(value < torch.finfo(torch.float64).eps, 0.0, value).to(torch.float32)
    flat = (plane[owner] * height + row) * width + col
    flat = torch.where(inside, flat, heat.numel() - 1)
    heat.scatter_reduce_(0, flat, value, reduce="amax", include_self=True)
