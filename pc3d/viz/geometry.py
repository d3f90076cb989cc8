"""Box wireframes (edges + heading marker) and input checks, numpy only (no Open3D needed).

Boxes follow docs/conventions.md: `(x, y, z, dx, dy, dz, heading)`, z at the box centre, heading
CCW from +x. Every renderer draws boxes as the line segments returned by `box_segments`.
"""
from __future__ import annotations

import numpy as np

# Corner order: bottom face 0-3 then top face 4-7, each CCW seen from above starting at the
# front-left corner, so corners 0, 3, 4, 7 are the front face (+dx/2 side).
_CORNER_SIGNS = np.array([
    [1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
    [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1],
], dtype=np.float64)

BOX_EDGES = np.array([
    [0, 1], [1, 2], [2, 3], [3, 0],      # bottom
    [4, 5], [5, 6], [6, 7], [7, 4],      # top
    [0, 4], [1, 5], [2, 6], [3, 7],      # pillars
], dtype=np.int64)
# Heading marker: a line from the top-face centre (8) to the middle of the top front edge (9), plus
# a cross on the front face, so the heading reads both from above and from behind.
HEADING_EDGES = np.array([[8, 9], [0, 7], [3, 4]], dtype=np.int64)
WIREFRAME_EDGES = np.concatenate([BOX_EDGES, HEADING_EDGES])


def as_numpy_points(points, name: str = "points") -> np.ndarray:
    """Validate `(N, C>=3)` finite-xyz points (numpy or torch) and return float64 numpy."""
    try:
        import torch
        if isinstance(points, torch.Tensor):
            points = points.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency of pc3d
        pass
    if not isinstance(points, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(points).__name__}")
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"{name}: expected shape (N, C>=3), got {points.shape}")
    if not np.issubdtype(points.dtype, np.number) or np.issubdtype(points.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected a real numeric dtype, got {points.dtype}")
    points = points.astype(np.float64, copy=False)
    if not np.isfinite(points[:, :3]).all():
        bad = int((~np.isfinite(points[:, :3])).any(axis=1).sum())
        raise ValueError(f"{name}: {bad} points have NaN/inf coordinates")
    return points


def as_numpy_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """Validate `(M, 7+)` finite boxes (numpy / torch / Boxes3D) and return float64 numpy (M, 7)."""
    if hasattr(boxes, "boxes") and hasattr(boxes, "labels"):
        boxes = boxes.boxes
    try:
        import torch
        if isinstance(boxes, torch.Tensor):
            boxes = boxes.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(boxes, np.ndarray):
        raise TypeError(f"{name}: expected Boxes3D, a numpy array or a torch tensor, got {type(boxes).__name__}")
    if boxes.size == 0:
        return np.zeros((0, 7))
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"{name}: expected shape (M, 7+), got {boxes.shape}")
    arr = boxes[:, :7].astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: boxes contain NaN/inf")
    if (arr[:, 3:6] < 0).any():
        raise ValueError(f"{name}: box sizes (dx, dy, dz) must be >= 0")
    return arr


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(M, 7+) boxes -> (M, 8, 3) corners in the order documented at `_CORNER_SIGNS`."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim == 1:
        boxes = boxes.reshape(-1, 7)
    local = _CORNER_SIGNS[None] * boxes[:, None, 3:6] / 2.0
    cos, sin = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    x = local[..., 0] * cos[:, None] - local[..., 1] * sin[:, None]
    y = local[..., 0] * sin[:, None] + local[..., 1] * cos[:, None]
    return np.stack([x, y, local[..., 2]], axis=-1) + boxes[:, None, :3]


def box_wireframe_vertices(boxes: np.ndarray) -> np.ndarray:
    """(M, 10, 3): the 8 corners, the top-face centre and the top front-edge midpoint."""
    corners = box_corners(boxes)
    top_center = corners[:, 4:8].mean(axis=1)
    front_mid = (corners[:, 4] + corners[:, 7]) / 2.0
    return np.concatenate([corners, top_center[:, None], front_mid[:, None]], axis=1)


def box_segments(boxes: np.ndarray) -> np.ndarray:
    """(M, 7+) boxes -> (M * 15, 2, 3) line segments: 12 edges + 3 heading-marker lines per box."""
    if len(boxes) == 0:
        return np.zeros((0, 2, 3))
    verts = box_wireframe_vertices(boxes)
    return verts[:, WIREFRAME_EDGES].reshape(-1, 2, 3)


def segments_per_box() -> int:
    return len(WIREFRAME_EDGES)


def points_in_boxes_labels(xyz: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) label of the box that contains each point (last box wins), -1 outside every box."""
    out = np.full(xyz.shape[0], -1, dtype=np.int64)
    for box, label in zip(boxes, labels):
        # Cheap BEV radius test first: only points near the box get the exact rotated test.
        radius = 0.5 * np.linalg.norm(box[3:5])
        near = np.nonzero((np.abs(xyz[:, 0] - box[0]) <= radius) & (np.abs(xyz[:, 1] - box[1]) <= radius))[0]
        if near.size == 0:
            continue
        d = xyz[near] - box[:3]
        cos, sin = np.cos(box[6]), np.sin(box[6])
        local_x = d[:, 0] * cos + d[:, 1] * sin
        local_y = -d[:, 0] * sin + d[:, 1] * cos
        inside = (np.abs(local_x) <= box[3] / 2) & (np.abs(local_y) <= box[4] / 2) & (np.abs(d[:, 2]) <= box[5] / 2)
        out[near[inside]] = int(label)
    return out
