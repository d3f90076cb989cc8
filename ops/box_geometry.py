"""Rotated 3D box geometry: points in boxes, rotated BEV / 3D IoU, rotated and circle NMS, corners.

Boxes follow docs/conventions.md: rows `(x, y, z, dx, dy, dz, heading, ...)` with z at the box centre,
extra columns (velocity, ...) ignored. A point is inside a box when
`|R(-heading)(p - c)| <= (dx, dy, dz) / 2` componentwise (the boundary counts as inside).

Every op accepts numpy arrays or torch tensors and returns the kind of its first argument (torch results
live on that argument's device). `backend` picks the implementation:

- "numba": CPU kernels in `_box_geometry_numba` (tensors on another device are copied to the CPU and the
  result copied back);
- "torch": plain PyTorch, any device (BEV intersection is a vectorised convex-polygon construction);
- "auto": numba for numpy arrays and CPU tensors, torch otherwise.

All geometry is computed in float64 whatever the input dtype. IoU matrices come back as float64 when
the first argument is float64, else float32.

Bad input raises: a non-array argument or a non-numeric dtype -> TypeError; a wrong shape, NaN/inf in
boxes or scores, or negative box sizes -> ValueError naming the argument. Zero-size boxes are valid
(their IoU with anything is 0). Non-finite *points* are simply never inside any box.
"""
from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from . import _box_geometry_numba as _nb

ArrayLike = Union[np.ndarray, torch.Tensor]

_BACKENDS = ("auto", "numba", "torch")
# pairs per chunk in the vectorised torch intersection (each pair holds ~24 candidate vertices)
_TORCH_PAIR_CHUNK = 16384
# rows per chunk when the torch path scans all (i, j) pairs for overlapping bounding circles
_TORCH_ROW_CHUNK = 1024


# ----------------------------------------------------------------------------------------------------
# argument checking and conversion
# ----------------------------------------------------------------------------------------------------
_TORCH_INTEGER_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _check_numeric(x, name: str) -> None:
    """TypeError unless x is a numpy array / torch tensor with a real (float or integer) dtype."""
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point() or x.dtype in _TORCH_INTEGER_DTYPES):
            raise TypeError(f"{name} must have a real numeric dtype, got {x.dtype}")
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            raise TypeError(f"{name} must have a real numeric dtype, got {x.dtype}")
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _check_table(x, name: str, min_cols: int, layout: str) -> None:
    _check_numeric(x, name)
    if x.ndim != 2 or x.shape[1] < min_cols:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")


def _check_boxes(boxes, name: str) -> None:
    _check_table(boxes, name, 7, "(M, 7+) = (x, y, z, dx, dy, dz, heading, ...)")
    core = boxes[:, :7]
    finite = torch.isfinite(core).all(dim=1) if isinstance(core, torch.Tensor) else np.isfinite(core).all(axis=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        rows = (bad[0] if isinstance(bad, tuple) else bad[:, 0])[:5].tolist()
        raise ValueError(f"{name} contains NaN or inf (first bad rows: {rows})")
    sizes = core[:, 3:6]
    if bool((sizes < 0).any()):
        raise ValueError(f"{name} has negative sizes dx, dy or dz (sizes must be >= 0)")


def _resolve_backend(backend: str, *arrays) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    on_accelerator = any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in arrays)
    return "torch" if on_accelerator else "numba"


def _to_numpy64(x, cols: int | None = None) -> np.ndarray:
    """C-contiguous float64 numpy copy/view of x (first `cols` columns)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if cols is not None:
        x = x[:, :cols]
    return np.ascontiguousarray(x, dtype=np.float64)


def _to_torch64(x, device: torch.device, cols: int | None = None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if cols is not None:
        x = x[:, :cols]
    return x.detach().to(device=device, dtype=torch.float64)


def _device_of(*arrays) -> torch.device:
    for a in arrays:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def _float_dtype_like(x):
    """The output float dtype for input x, in x's framework: float64 for float64 input, else float32."""
    if isinstance(x, torch.Tensor):
        return torch.float64 if x.dtype == torch.float64 else torch.float32
    return np.float64 if x.dtype == np.float64 else np.float32


def _return_like(result, like, dtype=None):
    """Convert a numpy or torch result to the kind (and device) of `like`."""
    if isinstance(like, torch.Tensor):
        if isinstance(result, np.ndarray):
            result = torch.from_numpy(np.ascontiguousarray(result))
        result = result.to(like.device)
        return result if dtype is None else result.to(dtype)
    if isinstance(result, torch.Tensor):
        result = result.detach().cpu().numpy()
    return result if dtype is None else result.astype(dtype, copy=False)


def _check_size_limit(value, name: str) -> int:
    """-1 for None, else a non-negative int."""
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
    return int(value)


def _check_scalar(value, name: str) -> float:
    """A finite Python float from a real number (0-d arrays / tensors included)."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


# ----------------------------------------------------------------------------------------------------
# corners
# ----------------------------------------------------------------------------------------------------
# Unit-box corner signs. Corners 0-3 are the bottom face (z - dz/2), 4-7 the top face directly above
# them; in box coordinates 0 = (+x, +y), 1 = (+x, -y), 2 = (-x, -y), 3 = (-x, +y):
#       7 -------- 4
#      /|         /|
#     6 -------- 5 .        x (heading) points from the 2-3 face to the 0-1 face
#     | |        | |
#     . 3 -------- 0
#     |/         |/
#     2 -------- 1
_CORNER_SIGNS = np.array([[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1],
                          [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]], dtype=np.float64) * 0.5


def boxes_to_corners_3d(boxes: ArrayLike) -> ArrayLike:
    """Corners of rotated 3D boxes.

    Args:
        boxes: (M, 7+) `(x, y, z, dx, dy, dz, heading, ...)`.
    Returns:
        (M, 8, 3) corners in the order drawn above (bottom face 0-3, then the top face), same kind and
        float dtype as `boxes` (float32 for integer input).
    """
    _check_boxes(boxes, "boxes")
    if isinstance(boxes, torch.Tensor):
        out_dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
        b = boxes[:, :7].to(torch.float64)
        signs = torch.from_numpy(_CORNER_SIGNS).to(b.device)
        local = signs[None] * b[:, None, 3:6]                                   # (M, 8, 3)
        cos_h, sin_h = torch.cos(b[:, 6])[:, None], torch.sin(b[:, 6])[:, None]
        x = local[..., 0] * cos_h - local[..., 1] * sin_h + b[:, None, 0]
        y = local[..., 0] * sin_h + local[..., 1] * cos_h + b[:, None, 1]
        z = local[..., 2] + b[:, None, 2]
        return torch.stack([x, y, z], dim=-1).to(out_dtype)
    out_dtype = boxes.dtype if boxes.dtype.kind == "f" else np.float32
    b = boxes[:, :7].astype(np.float64)
    local = _CORNER_SIGNS[None] * b[:, None, 3:6]
    cos_h, sin_h = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x = local[..., 0] * cos_h - local[..., 1] * sin_h + b[:, None, 0]
    y = local[..., 0] * sin_h + local[..., 1] * cos_h + b[:, None, 1]
    z = local[..., 2] + b[:, None, 2]
    return np.stack([x, y, z], axis=-1).astype(out_dtype)


# ----------------------------------------------------------------------------------------------------
# points in boxes
# ----------------------------------------------------------------------------------------------------
def _torch_points_in_boxes(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, 3) float64, (M, 7) float64 -> (N, M) bool; same arithmetic as the numba kernel."""
    n, m = points.shape[0], boxes.shape[0]
    out = torch.zeros((n, m), dtype=torch.bool, device=points.device)
    if n == 0 or m == 0:
        return out
    cos_h, sin_h = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    half = boxes[:, 3:6] * 0.5
    rows = max(1, (1 << 22) // max(m, 1))  # bound the (rows, M) float64 temporaries to ~32 MB each
    for start in range(0, n, rows):
        p = points[start:start + rows]
        dx = p[:, 0:1] - boxes[None, :, 0]
        dy = p[:, 1:2] - boxes[None, :, 1]
        dz = p[:, 2:3] - boxes[None, :, 2]
        local_x = dx * cos_h + dy * sin_h
        local_y = -dx * sin_h + dy * cos_h
        out[start:start + rows] = ((local_x.abs() <= half[:, 0]) & (local_y.abs() <= half[:, 1])
                                   & (dz.abs() <= half[:, 2]))
    return out


def _points_in_boxes_impl(points, boxes, backend: str, count: bool):
    _check_table(points, "points", 3, "(N, 3+) = (x, y, z, ...)")
    _check_boxes(boxes, "boxes")
    backend = _resolve_backend(backend, points, boxes)
    if backend == "numba":
        p = _to_numpy64(points, 3)
        b = _to_numpy64(boxes, 7)
        cos_h, sin_h = np.cos(b[:, 6]), np.sin(b[:, 6])
        if count:
            return _nb.count_points_in_boxes(p, b, cos_h, sin_h)
        return _nb.points_in_boxes_mask(p, b, cos_h, sin_h)
    device = _device_of(points, boxes)
    mask = _torch_points_in_boxes(_to_torch64(points, device, 3), _to_torch64(boxes, device, 7))
    return mask.sum(dim=0, dtype=torch.int64) if count else mask


def points_in_boxes(points: ArrayLike, boxes: ArrayLike, backend: str = "auto") -> ArrayLike:
    """Which points lie inside which rotated 3D boxes (boundary inclusive).

    Args:
        points: (N, 3+) xyz in the first three columns.
        boxes: (M, 7+) `(x, y, z, dx, dy, dz, heading, ...)`.
    Returns:
        (N, M) bool, same kind as `points`.
    """
    return _return_like(_points_in_boxes_impl(points, boxes, backend, count=False), points)


def count_points_in_boxes(points: ArrayLike, boxes: ArrayLike, backend: str = "auto") -> ArrayLike:
    """(M,) int64 number of points inside each box (same rule as `points_in_boxes`), same kind as `points`."""
    return _return_like(_points_in_boxes_impl(points, boxes, backend, count=True), points)


# ----------------------------------------------------------------------------------------------------
# rotated IoU (torch path)
# ----------------------------------------------------------------------------------------------------
def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _bev_rectangles(boxes: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """(P, 7) boxes -> (P, 4, 2) counter-clockwise BEV corners relative to origin (P, 2)."""
    signs = boxes.new_tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    local = signs[None] * boxes[:, None, 3:5] * 0.5
    cos_h, sin_h = torch.cos(boxes[:, 6])[:, None], torch.sin(boxes[:, 6])[:, None]
    x = local[..., 0] * cos_h - local[..., 1] * sin_h + (boxes[:, 0] - origin[:, 0])[:, None]
    y = local[..., 0] * sin_h + local[..., 1] * cos_h + (boxes[:, 1] - origin[:, 1])[:, None]
    return torch.stack([x, y], dim=-1)


def _inside_rectangle(points: torch.Tensor, boxes: torch.Tensor, origin: torch.Tensor, tol: torch.Tensor):
    """(P, K, 2) points relative to origin, (P, 7) boxes -> (P, K) inside (with a tiny tolerance)."""
    rel_x = points[..., 0] - (boxes[:, 0] - origin[:, 0])[:, None]
    rel_y = points[..., 1] - (boxes[:, 1] - origin[:, 1])[:, None]
    cos_h, sin_h = torch.cos(boxes[:, 6])[:, None], torch.sin(boxes[:, 6])[:, None]
    local_x = rel_x * cos_h + rel_y * sin_h
    local_y = -rel_x * sin_h + rel_y * cos_h
    return ((local_x.abs() <= boxes[:, 3:4] * 0.5 + tol[:, None])
            & (local_y.abs() <= boxes[:, 4:5] * 0.5 + tol[:, None]))


def _torch_bev_intersection_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, 7), (P, 7) float64 -> (P,) BEV intersection area of a[p] and b[p].

    The intersection of two convex polygons is the convex hull of: corners of a inside b, corners of b
    inside a, and edge/edge crossings. Those (at most 24) candidates are ordered by angle around their
    mean and summed with the shoelace formula; unused slots repeat the first vertex (zero area).
    """
    origin = a[:, 0:2]
    corners_a = _bev_rectangles(a, origin)                                       # (P, 4, 2)
    corners_b = _bev_rectangles(b, origin)
    scale = torch.maximum(a[:, 3:5].amax(dim=1), b[:, 3:5].amax(dim=1)).clamp(min=1.0)
    tol = 1e-12 * scale
    a_in_b = _inside_rectangle(corners_a, b, origin, tol)
    b_in_a = _inside_rectangle(corners_b, a, origin, tol)

    # edge k of a: corners_a[k] -> corners_a[k+1]; all 4 x 4 edge pairs
    start_a, dir_a = corners_a, corners_a.roll(-1, dims=1) - corners_a
    start_b, dir_b = corners_b, corners_b.roll(-1, dims=1) - corners_b
    sa, da = start_a[:, :, None], dir_a[:, :, None]                              # (P, 4, 1, 2)
    sb, db = start_b[:, None], dir_b[:, None]                                    # (P, 1, 4, 2)
    denom = _cross(da, db)                                                       # (P, 4, 4)
    offset = sb - sa
    parallel = denom.abs() <= 1e-12 * (scale * scale)[:, None, None]
    safe = torch.where(parallel, torch.ones_like(denom), denom)
    t = _cross(offset, db) / safe
    u = _cross(offset, da) / safe
    eps = 1e-12
    crossing = (~parallel) & (t >= -eps) & (t <= 1 + eps) & (u >= -eps) & (u <= 1 + eps)
    crossings = (sa + t[..., None] * da).reshape(-1, 16, 2)

    candidates = torch.cat([corners_a, corners_b, crossings], dim=1)              # (P, 24, 2)
    valid = torch.cat([a_in_b, b_in_a, crossing.reshape(-1, 16)], dim=1)         # (P, 24)
    count = valid.sum(dim=1)
    weights = valid.to(candidates.dtype)[..., None]
    centre = (candidates * weights).sum(dim=1) / count.clamp(min=1)[:, None].to(candidates.dtype)
    rel = candidates - centre[:, None]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))              # invalid slots sort last
    order = angle.argsort(dim=1)
    ordered = torch.gather(rel, 1, order[..., None].expand(-1, -1, 2))
    ordered_valid = torch.gather(valid, 1, order)
    ordered = torch.where(ordered_valid[..., None], ordered, ordered[:, :1])
    area = 0.5 * _cross(ordered, ordered.roll(-1, dims=1)).sum(dim=1)
    area = torch.where(count >= 3, area.abs(), torch.zeros_like(area))
    zero_size = (a[:, 3] <= 0) | (a[:, 4] <= 0) | (b[:, 3] <= 0) | (b[:, 4] <= 0)
    return torch.where(zero_size, torch.zeros_like(area), area)


def _torch_iou_pairs(a: torch.Tensor, b: torch.Tensor, use_3d: bool) -> torch.Tensor:
    """(P, 7), (P, 7) float64 -> (P,) IoU of a[p] and b[p] (same formula as the numba `_iou_pair`)."""
    pieces = [_torch_bev_intersection_pairs(a[s:s + _TORCH_PAIR_CHUNK], b[s:s + _TORCH_PAIR_CHUNK])
              for s in range(0, a.shape[0], _TORCH_PAIR_CHUNK)]
    inter = torch.cat(pieces) if pieces else a.new_zeros(0)
    if use_3d:
        top = torch.minimum(a[:, 2] + 0.5 * a[:, 5], b[:, 2] + 0.5 * b[:, 5])
        bottom = torch.maximum(a[:, 2] - 0.5 * a[:, 5], b[:, 2] - 0.5 * b[:, 5])
        inter = inter * (top - bottom).clamp(min=0)
        size_a, size_b = a[:, 3] * a[:, 4] * a[:, 5], b[:, 3] * b[:, 4] * b[:, 5]
    else:
        size_a, size_b = a[:, 3] * a[:, 4], b[:, 3] * b[:, 4]
    union = size_a + size_b - inter
    ok = (union > 0) & (inter > 0)
    iou = inter / torch.where(ok, union, torch.ones_like(union))
    return torch.where(ok, iou.clamp(max=1.0), torch.zeros_like(iou))


def _torch_touching_pairs(a: torch.Tensor, b: torch.Tensor, upper_only: bool):
    """Index pairs (i, j) whose BEV bounding circles touch (only i < j when upper_only, a is b).

    Sweep and prune: rows of a are visited in x order, 1024 at a time, and compared only with the
    columns of b whose x lies within reach of that row block (b sorted by x + searchsorted).
    """
    empty = torch.zeros(0, dtype=torch.int64, device=a.device)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return empty, empty
    radius_a = 0.5 * torch.hypot(a[:, 3], a[:, 4])
    radius_b = 0.5 * torch.hypot(b[:, 3], b[:, 4])
    reach_max = radius_a.max() + radius_b.max()
    order_a = torch.argsort(a[:, 0])
    order_b = torch.argsort(b[:, 0])
    x_b = b[order_b, 0].contiguous()
    rows, cols = [], []
    for start in range(0, a.shape[0], _TORCH_ROW_CHUNK):
        row_index = order_a[start:start + _TORCH_ROW_CHUNK]
        ca = a[row_index]
        bounds = torch.stack([ca[:, 0].min() - reach_max, ca[:, 0].max() + reach_max])
        low, high = torch.searchsorted(x_b, bounds).tolist()
        if high <= low:
            continue
        col_index = order_b[low:high]
        cb = b[col_index]
        dist2 = (ca[:, None, 0] - cb[None, :, 0]) ** 2 + (ca[:, None, 1] - cb[None, :, 1]) ** 2
        reach = radius_a[row_index, None] + radius_b[None, col_index]
        near = dist2 <= reach * reach
        if upper_only:
            near &= col_index[None, :] > row_index[:, None]
        i, j = near.nonzero(as_tuple=True)
        rows.append(row_index[i])
        cols.append(col_index[j])
    if not rows:
        return empty, empty
    return torch.cat(rows), torch.cat(cols)


def _torch_iou_matrix(a: torch.Tensor, b: torch.Tensor, use_3d: bool) -> torch.Tensor:
    out = a.new_zeros((a.shape[0], b.shape[0]))
    if a.shape[0] == 0 or b.shape[0] == 0:
        return out
    i, j = _torch_touching_pairs(a, b, upper_only=False)
    if i.numel():
        out[i, j] = _torch_iou_pairs(a[i], b[j], use_3d)
    return out


def _box_iou_impl(a, b, backend: str, use_3d: bool):
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    backend = _resolve_backend(backend, a, b)
    out_dtype = _float_dtype_like(a)
    if backend == "numba":
        a64, b64 = _to_numpy64(a, 7), _to_numpy64(b, 7)
        iou = _nb.iou_matrix(a64, np.cos(a64[:, 6]), np.sin(a64[:, 6]), b64, np.cos(b64[:, 6]), np.sin(b64[:, 6]),
                             use_3d)
    else:
        device = _device_of(a, b)
        iou = _torch_iou_matrix(_to_torch64(a, device, 7), _to_torch64(b, device, 7), use_3d)
    return _return_like(iou, a, out_dtype)


def box_iou_bev(a: ArrayLike, b: ArrayLike, backend: str = "auto") -> ArrayLike:
    """Rotated bird's-eye-view IoU.

    Args:
        a: (N, 7+), b: (M, 7+) boxes `(x, y, z, dx, dy, dz, heading, ...)`.
    Returns:
        (N, M) IoU of the BEV rectangles in [0, 1] (0 when either box has zero area), same kind as `a`.
    """
    return _box_iou_impl(a, b, backend, use_3d=False)


def box_iou_3d(a: ArrayLike, b: ArrayLike, backend: str = "auto") -> ArrayLike:
    """Rotated 3D IoU: BEV intersection area x z-overlap over the union of volumes.

    Args:
        a: (N, 7+), b: (M, 7+) boxes.
    Returns:
        (N, M) IoU in [0, 1] (0 when either box has zero volume), same kind as `a`.
    """
    return _box_iou_impl(a, b, backend, use_3d=True)


def _torch_iou_paired(a: torch.Tensor, b: torch.Tensor, use_3d: bool) -> torch.Tensor:
    """(P,) IoU of a[p] with b[p]; pairs whose bounding circles do not touch are 0, as in the matrix."""
    out = a.new_zeros(a.shape[0])
    if a.shape[0] == 0:
        return out
    # the same touching test as `_torch_touching_pairs`, so that this is exactly the matrix diagonal
    dist2 = (a[:, 0] - b[:, 0]) ** 2 + (a[:, 1] - b[:, 1]) ** 2
    reach = 0.5 * torch.hypot(a[:, 3], a[:, 4]) + 0.5 * torch.hypot(b[:, 3], b[:, 4])
    near = (dist2 <= reach * reach).nonzero(as_tuple=True)[0]
    if near.numel():
        out[near] = _torch_iou_pairs(a[near], b[near], use_3d)
    return out


def _box_iou_paired_impl(a, b, backend: str, use_3d: bool):
    _check_boxes(a, "a")
    _check_boxes(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired IoU: a has {a.shape[0]} boxes but b has {b.shape[0]}; pairs need equal counts")
    backend = _resolve_backend(backend, a, b)
    out_dtype = _float_dtype_like(a)
    if backend == "numba":
        a64, b64 = _to_numpy64(a, 7), _to_numpy64(b, 7)
        iou = _nb.iou_paired(a64, np.cos(a64[:, 6]), np.sin(a64[:, 6]), b64, np.cos(b64[:, 6]), np.sin(b64[:, 6]),
                             use_3d)
    else:
        device = _device_of(a, b)
        iou = _torch_iou_paired(_to_torch64(a, device, 7), _to_torch64(b, device, 7), use_3d)
    return _return_like(iou, a, out_dtype)


def box_iou_bev_paired(a: ArrayLike, b: ArrayLike, backend: str = "auto") -> ArrayLike:
    """Rotated BEV IoU of aligned pairs: `(P,)` IoU of `a[p]` with `b[p]` (both `(P, 7+)`).

    Equal to `diagonal(box_iou_bev(a, b))` without evaluating the other pairs.
    """
    return _box_iou_paired_impl(a, b, backend, use_3d=False)


def box_iou_3d_paired(a: ArrayLike, b: ArrayLike, backend: str = "auto") -> ArrayLike:
    """Rotated 3D IoU of aligned pairs: `(P,)` IoU of `a[p]` with `b[p]` (both `(P, 7+)`).

    Equal to `diagonal(box_iou_3d(a, b))` without evaluating the other pairs (the Waymo metric's
    candidate pairs, the CenterPoint IoU branch's decoded-vs-GT targets).
    """
    return _box_iou_paired_impl(a, b, backend, use_3d=True)


# ----------------------------------------------------------------------------------------------------
# NMS
# ----------------------------------------------------------------------------------------------------
def _greedy_from_pairs(n: int, first: np.ndarray, second: np.ndarray, post_max_size: int) -> np.ndarray:
    """Greedy suppression over score-sorted positions 0..n-1 given overlapping pairs first < second."""
    order = np.argsort(first, kind="stable")
    first, second = first[order], second[order]
    starts = np.searchsorted(first, np.arange(n + 1))
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        if 0 <= post_max_size <= len(keep):
            break
        keep.append(i)
        suppressed[second[starts[i]:starts[i + 1]]] = True
    return np.asarray(keep, dtype=np.int64)


def _check_scores(scores, n: int):
    _check_numeric(scores, "scores")
    if scores.ndim != 1 or scores.shape[0] != n:
        raise ValueError(f"scores must have shape ({n},) to match boxes, got {tuple(scores.shape)}")
    finite = torch.isfinite(scores).all() if isinstance(scores, torch.Tensor) else np.isfinite(scores).all()
    if not bool(finite):
        raise ValueError("scores contains NaN or inf")


def _score_order(scores, backend: str, device) -> np.ndarray | torch.Tensor:
    """Stable descending order (ties keep input order): the same permutation on both backends."""
    if backend == "numba":
        s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
        return np.argsort(-s.astype(np.float64), kind="stable")
    s = scores if isinstance(scores, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(scores))
    return torch.sort(s.to(device=device, dtype=torch.float64), descending=True, stable=True).indices


def nms_rotated(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float, pre_max_size: int | None = None,
                post_max_size: int | None = None, backend: str = "auto") -> ArrayLike:
    """Greedy non-maximum suppression with rotated BEV IoU (the rule of OpenPCDet's `nms_gpu`).

    `iou_threshold` must be a finite number in [0, 1] (ValueError otherwise).

    Boxes are visited by descending score (ties: lower index first); a box is dropped when its BEV IoU
    with an already kept box is strictly greater than `iou_threshold`.

    Args:
        boxes: (N, 7+); scores: (N,).
        pre_max_size: only the top-`pre_max_size` boxes by score take part (None: all).
        post_max_size: keep at most this many (None: no limit).
    Returns:
        keep: (K,) int64 indices into `boxes`, in descending score order; same kind as `boxes`.
    """
    _check_boxes(boxes, "boxes")
    _check_scores(scores, boxes.shape[0])
    threshold = _check_scalar(iou_threshold, "iou_threshold")
    if not 0.0 <= threshold <= 1.0:
        # an IoU is in [0, 1]: below 0 every overlapping pair would suppress, above 1 nothing would
        raise ValueError(f"iou_threshold must be in [0, 1], got {threshold}")
    pre = _check_size_limit(pre_max_size, "pre_max_size")
    post = _check_size_limit(post_max_size, "post_max_size")
    backend = _resolve_backend(backend, boxes, scores)
    device = _device_of(boxes, scores)
    order = _score_order(scores, backend, device)
    if pre >= 0:
        order = order[:pre]
    if backend == "numba":
        b = _to_numpy64(boxes, 7)[order]
        kept = _nb.nms_rotated_sorted(b, np.cos(b[:, 6]), np.sin(b[:, 6]), threshold, post)
        return _return_like(order[kept].astype(np.int64), boxes)
    b = _to_torch64(boxes, device, 7)[order]
    i, j = _torch_touching_pairs(b, b, upper_only=True)
    overlap = _torch_iou_pairs(b[i], b[j], use_3d=False) > threshold
    kept = _greedy_from_pairs(b.shape[0], i[overlap].cpu().numpy(), j[overlap].cpu().numpy(), post)
    return _return_like(order[torch.from_numpy(kept).to(order.device)].to(torch.int64), boxes)


def nms_circle(boxes: ArrayLike, scores: ArrayLike, distance_threshold: float, post_max_size: int | None = None,
               backend: str = "auto") -> ArrayLike:
    """CenterPoint's circle NMS: greedily keep the best-scoring box and drop every later box whose BEV
    centre lies within `distance_threshold` metres (Euclidean, inclusive) of a kept centre.

    Note: CenterPoint's own `circle_nms` compares the *squared* distance with its `min_radius` setting;
    to reproduce a CenterPoint config pass `distance_threshold=sqrt(min_radius)`.

    Args:
        boxes: (N, 2+) (only the BEV centre x, y is used, so (N, 7+) boxes work); scores: (N,).
    Returns:
        keep: (K,) int64 indices into `boxes` in descending score order; same kind as `boxes`.
    """
    _check_table(boxes, "boxes", 2, "(N, 2+) with BEV centre (x, y) first")
    centers_finite = (torch.isfinite(boxes[:, :2]).all() if isinstance(boxes, torch.Tensor)
                      else np.isfinite(boxes[:, :2]).all())
    if not bool(centers_finite):
        raise ValueError("boxes contains NaN or inf in the centre columns (x, y)")
    _check_scores(scores, boxes.shape[0])
    threshold = _check_scalar(distance_threshold, "distance_threshold")
    if threshold < 0:
        raise ValueError(f"distance_threshold must be >= 0, got {threshold}")
    post = _check_size_limit(post_max_size, "post_max_size")
    backend = _resolve_backend(backend, boxes, scores)
    device = _device_of(boxes, scores)
    order = _score_order(scores, backend, device)
    if backend == "numba":
        centers = _to_numpy64(boxes, 2)[order]
        kept = _nb.nms_circle_sorted(np.ascontiguousarray(centers), threshold, post)
        return _return_like(order[kept].astype(np.int64), boxes)
    centers = _to_torch64(boxes, device, 2)[order]
    firsts, seconds = [], []
    for start in range(0, centers.shape[0], _TORCH_ROW_CHUNK):
        block = centers[start:start + _TORCH_ROW_CHUNK]
        dist2 = ((block[:, None, :] - centers[None, :, :]) ** 2).sum(dim=-1)
        later = torch.arange(centers.shape[0], device=device)[None, :] > \
            torch.arange(start, start + block.shape[0], device=device)[:, None]
        i, j = ((dist2 <= threshold * threshold) & later).nonzero(as_tuple=True)
        firsts.append((i + start).cpu().numpy())
        seconds.append(j.cpu().numpy())
    first = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
    second = np.concatenate(seconds) if seconds else np.zeros(0, np.int64)
    kept = _greedy_from_pairs(centers.shape[0], first, second, post)
    return _return_like(order[torch.from_numpy(kept).to(order.device)].to(torch.int64), boxes)
