"""Ground-truth labels of a simulated frame: boxes, classes, points inside, Waymo-style difficulty."""
from __future__ import annotations

import math

import numba
import numpy as np
import torch

from pc3d.structures import Boxes3D

from .scene import CLASS_NAMES, Scene

LEVEL_1 = 1
LEVEL_2 = 2
LEVEL_2_MAX_POINTS = 5  # Waymo: boxes with <= 5 points are LEVEL_2


@numba.njit(cache=True)
def _count_kernel(xyz, boxes, counts):
    for m in range(boxes.shape[0]):
        cx, cy, cz = boxes[m, 0], boxes[m, 1], boxes[m, 2]
        hx, hy, hz = boxes[m, 3] / 2, boxes[m, 4] / 2, boxes[m, 5] / 2
        c = math.cos(boxes[m, 6])
        s = math.sin(boxes[m, 6])
        radius = math.sqrt(hx * hx + hy * hy)
        n = 0
        for i in range(xyz.shape[0]):
            dz = xyz[i, 2] - cz
            if abs(dz) > hz:
                continue
            dx = xyz[i, 0] - cx
            dy = xyz[i, 1] - cy
            if abs(dx) > radius or abs(dy) > radius:
                continue
            if abs(c * dx + s * dy) <= hx and abs(-s * dx + c * dy) <= hy:
                n += 1
        counts[m] = n


def count_points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(M,) int64 number of `points (N, 3+)` inside each of `boxes (M, 7+)` (faces inclusive).

    Inside means `|R(-heading) (p - c)| <= (dx, dy, dz) / 2` componentwise (docs/conventions.md),
    evaluated in float64.
    """
    points = np.asarray(points)
    boxes = np.asarray(boxes)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape (N, 3+), got {points.shape}")
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"boxes must have shape (M, 7+), got {boxes.shape}")
    xyz = np.ascontiguousarray(points[:, :3], np.float64)
    box64 = np.ascontiguousarray(boxes[:, :7], np.float64)
    if not (np.isfinite(xyz).all() and np.isfinite(box64).all()):
        raise ValueError("points and boxes must be finite")
    counts = np.zeros(boxes.shape[0], np.int64)
    _count_kernel(xyz, box64, counts)
    return counts


def difficulty_from_counts(num_points: np.ndarray) -> np.ndarray:
    """(M,) int64: LEVEL_2 (2) for boxes with <= 5 points, else LEVEL_1 (1)."""
    return np.where(np.asarray(num_points) <= LEVEL_2_MAX_POINTS, LEVEL_2, LEVEL_1).astype(np.int64)


def scene_labels(scene: Scene, points: np.ndarray) -> Boxes3D:
    """Boxes3D of every object of `scene` (0-point objects included), counted against `points (N, 3+)`.

    Counts use the float32 boxes that are stored, so a reader recounting from the files agrees.
    """
    boxes = scene.boxes.astype(np.float32)
    labels = np.array([CLASS_NAMES.index(name) for name in scene.class_names], np.int64)
    num_points = count_points_in_boxes(np.asarray(points, np.float32), boxes)
    return Boxes3D(torch.from_numpy(boxes), torch.from_numpy(labels), CLASS_NAMES,
                   difficulty=torch.from_numpy(difficulty_from_counts(num_points)),
                   num_points=torch.from_numpy(num_points))
