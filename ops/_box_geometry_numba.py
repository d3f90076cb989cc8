"""numba CPU kernels behind `pc3d.ops.box_geometry` (backend="numba").

Callers (`box_geometry.py`) validate and convert every argument first: boxes arrive as C-contiguous
float64 `(M, 7)` arrays `(x, y, z, dx, dy, dz, heading)` with finite values and non-negative sizes,
plus precomputed `cos(heading)`, `sin(heading)` (computed once by the caller so that the numba and
torch backends use the very same rotation and agree bit for bit on boundary points).

BEV intersection is Sutherland-Hodgman clipping of one rectangle by the four edges of the other;
coordinates are taken relative to the first box's centre so that boxes far from the origin do not lose
precision to cancellation.

The kernels are deliberately serial (no `parallel=True`): their work is small (ms), and numba's OpenMP
threading layer keeps its worker threads spinning after a parallel region, which on a busy 2-core box
made the next torch op 5-20x slower and the parallel IoU matrix itself 30x slower than this serial one.
"""
import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _inside_box(px, py, pz, box, cos_h, sin_h):
    """True when the point is inside the box, boundary included (docs/conventions.md rule)."""
    dx = px - box[0]
    dy = py - box[1]
    dz = pz - box[2]
    local_x = dx * cos_h + dy * sin_h
    local_y = -dx * sin_h + dy * cos_h
    return abs(local_x) <= box[3] * 0.5 and abs(local_y) <= box[4] * 0.5 and abs(dz) <= box[5] * 0.5


@njit(cache=True)
def points_in_boxes_mask(points, boxes, cos_h, sin_h):
    """(N, M) bool: point n inside box m. Non-finite points fail every comparison, so they are never inside."""
    n = points.shape[0]
    m = boxes.shape[0]
    out = np.zeros((n, m), np.bool_)
    # a cheap axis-aligned bounding-circle test rejects most (point, box) pairs before the rotation
    radius = np.empty(m, np.float64)
    for j in range(m):
        radius[j] = 0.5 * np.sqrt(boxes[j, 3] * boxes[j, 3] + boxes[j, 4] * boxes[j, 4])
    for i in range(n):
        px = points[i, 0]
        py = points[i, 1]
        pz = points[i, 2]
        for j in range(m):
            if abs(px - boxes[j, 0]) > radius[j] or abs(py - boxes[j, 1]) > radius[j]:
                continue
            out[i, j] = _inside_box(px, py, pz, boxes[j], cos_h[j], sin_h[j])
    return out


@njit(cache=True)
def count_points_in_boxes(points, boxes, cos_h, sin_h):
    """(M,) int64 number of points inside each box, without materialising the (N, M) mask."""
    n = points.shape[0]
    m = boxes.shape[0]
    counts = np.zeros(m, np.int64)
    for j in range(m):
        radius = 0.5 * np.sqrt(boxes[j, 3] * boxes[j, 3] + boxes[j, 4] * boxes[j, 4])
        total = 0
        for i in range(n):
            px = points[i, 0]
            py = points[i, 1]
            if abs(px - boxes[j, 0]) > radius or abs(py - boxes[j, 1]) > radius:
                continue
            if _inside_box(px, py, points[i, 2], boxes[j], cos_h[j], sin_h[j]):
                total += 1
        counts[j] = total
    return counts


@njit(cache=True, inline="always")
def _rectangle_bev(box, cos_h, sin_h, origin_x, origin_y, out):
    """Write the 4 BEV corners of `box` (counter-clockwise) into out (4, 2), relative to the origin."""
    hx = box[3] * 0.5
    hy = box[4] * 0.5
    cx = box[0] - origin_x
    cy = box[1] - origin_y
    signs_x = (1.0, -1.0, -1.0, 1.0)
    signs_y = (1.0, 1.0, -1.0, -1.0)
    for k in range(4):
        lx = signs_x[k] * hx
        ly = signs_y[k] * hy
        out[k, 0] = cx + lx * cos_h - ly * sin_h
        out[k, 1] = cy + lx * sin_h + ly * cos_h


@njit(cache=True)
def _clip_by_line(poly, count, ax, ay, bx, by, out):
    """Keep the part of convex polygon poly[:count] left of the directed line a->b; returns the new count."""
    ex = bx - ax
    ey = by - ay
    n_out = 0
    for k in range(count):
        k_next = k + 1 if k + 1 < count else 0
        px = poly[k, 0]
        py = poly[k, 1]
        qx = poly[k_next, 0]
        qy = poly[k_next, 1]
        side_p = ex * (py - ay) - ey * (px - ax)
        side_q = ex * (qy - ay) - ey * (qx - ax)
        if side_p >= 0.0:
            out[n_out, 0] = px
            out[n_out, 1] = py
            n_out += 1
        if (side_p >= 0.0) != (side_q >= 0.0):
            # side_p != side_q here (they have different signs), so the division is safe
            t = side_p / (side_p - side_q)
            out[n_out, 0] = px + t * (qx - px)
            out[n_out, 1] = py + t * (qy - py)
            n_out += 1
    return n_out


@njit(cache=True)
def bev_intersection_area(box_a, cos_a, sin_a, box_b, cos_b, sin_b, work_a, work_b, rect_b):
    """Area of the intersection of two rotated BEV rectangles.

    work_a / work_b: (9, 2) scratch polygons (clipping a quad by 4 lines leaves at most 8 vertices);
    rect_b: (4, 2) scratch. Callers reject pairs whose bounding circles do not touch before calling.
    """
    if box_a[3] <= 0.0 or box_a[4] <= 0.0 or box_b[3] <= 0.0 or box_b[4] <= 0.0:
        return 0.0
    _rectangle_bev(box_a, cos_a, sin_a, box_a[0], box_a[1], work_a)
    _rectangle_bev(box_b, cos_b, sin_b, box_a[0], box_a[1], rect_b)
    count = 4
    src = work_a
    dst = work_b
    for k in range(4):
        k_next = k + 1 if k < 3 else 0
        count = _clip_by_line(src, count, rect_b[k, 0], rect_b[k, 1], rect_b[k_next, 0], rect_b[k_next, 1], dst)
        if count < 3:
            return 0.0
        src, dst = dst, src
    area = 0.0
    for k in range(count):
        k_next = k + 1 if k + 1 < count else 0
        area += src[k, 0] * src[k_next, 1] - src[k_next, 0] * src[k, 1]
    return max(0.5 * area, 0.0)


@njit(cache=True, inline="always")
def _iou_pair(box_a, cos_a, sin_a, box_b, cos_b, sin_b, use_3d, work_a, work_b, rect_b):
    inter = bev_intersection_area(box_a, cos_a, sin_a, box_b, cos_b, sin_b, work_a, work_b, rect_b)
    if use_3d:
        top = min(box_a[2] + 0.5 * box_a[5], box_b[2] + 0.5 * box_b[5])
        bottom = max(box_a[2] - 0.5 * box_a[5], box_b[2] - 0.5 * box_b[5])
        inter = inter * max(top - bottom, 0.0)
        size_a = box_a[3] * box_a[4] * box_a[5]
        size_b = box_b[3] * box_b[4] * box_b[5]
    else:
        size_a = box_a[3] * box_a[4]
        size_b = box_b[3] * box_b[4]
    union = size_a + size_b - inter
    if union <= 0.0 or inter <= 0.0:
        return 0.0
    return min(inter / union, 1.0)


@njit(cache=True)
def bev_radius(boxes):
    """(M,) radius of each box's BEV bounding circle (half the footprint diagonal)."""
    m = boxes.shape[0]
    radius = np.empty(m, np.float64)
    for j in range(m):
        radius[j] = 0.5 * np.sqrt(boxes[j, 3] * boxes[j, 3] + boxes[j, 4] * boxes[j, 4])
    return radius


@njit(cache=True)
def iou_matrix(boxes_a, cos_a, sin_a, boxes_b, cos_b, sin_b, use_3d):
    """(N, M) float64 rotated IoU (BEV when use_3d is False, else BEV area x height overlap)."""
    n = boxes_a.shape[0]
    m = boxes_b.shape[0]
    out = np.zeros((n, m), np.float64)
    radius_a = bev_radius(boxes_a)
    radius_b = bev_radius(boxes_b)
    for i in range(n):
        work_a = np.empty((9, 2), np.float64)
        work_b = np.empty((9, 2), np.float64)
        rect_b = np.empty((4, 2), np.float64)
        for j in range(m):
            # inline bounding-circle rejection: most pairs of a scene are far apart
            ddx = boxes_a[i, 0] - boxes_b[j, 0]
            ddy = boxes_a[i, 1] - boxes_b[j, 1]
            reach = radius_a[i] + radius_b[j]
            if ddx * ddx + ddy * ddy > reach * reach:
                continue
            out[i, j] = _iou_pair(boxes_a[i], cos_a[i], sin_a[i], boxes_b[j], cos_b[j], sin_b[j], use_3d,
                                  work_a, work_b, rect_b)
    return out


@njit(cache=True)
def iou_paired(boxes_a, cos_a, sin_a, boxes_b, cos_b, sin_b, use_3d):
    """(P,) float64 rotated IoU of row p of boxes_a with row p of boxes_b: the diagonal of `iou_matrix`
    without the other N*M - N pairs (same bounding-circle rejection, same `_iou_pair`)."""
    n = boxes_a.shape[0]
    out = np.zeros(n, np.float64)
    work_a = np.empty((9, 2), np.float64)
    work_b = np.empty((9, 2), np.float64)
    rect_b = np.empty((4, 2), np.float64)
    for p in range(n):
        radius_a = 0.5 * np.sqrt(boxes_a[p, 3] * boxes_a[p, 3] + boxes_a[p, 4] * boxes_a[p, 4])
        radius_b = 0.5 * np.sqrt(boxes_b[p, 3] * boxes_b[p, 3] + boxes_b[p, 4] * boxes_b[p, 4])
        ddx = boxes_a[p, 0] - boxes_b[p, 0]
        ddy = boxes_a[p, 1] - boxes_b[p, 1]
        reach = radius_a + radius_b
        if ddx * ddx + ddy * ddy > reach * reach:
            continue
        out[p] = _iou_pair(boxes_a[p], cos_a[p], sin_a[p], boxes_b[p], cos_b[p], sin_b[p], use_3d,
                           work_a, work_b, rect_b)
    return out


@njit(cache=True)
def _uniform_grid(xy, reach):
    """Bucket BEV points into square cells of side >= reach, so that any two points closer than `reach`
    fall in the same or in neighbouring cells (3 x 3 neighbourhood).

    Returns (cell_x, cell_y, ny, nx, starts, members): members[starts[c]:starts[c + 1]] are the rows in
    cell c = cell_x * ny + cell_y, in ascending row order. The cell side grows when the extent would
    need more than ~4 N cells (far outliers), which only costs speed, never correctness.
    """
    n = xy.shape[0]
    x_min = xy[:, 0].min()
    y_min = xy[:, 1].min()
    extent_x = xy[:, 0].max() - x_min
    extent_y = xy[:, 1].max() - y_min
    # slack so that rounding in the division can never split a pair at distance == reach two cells apart
    cell = max(reach * (1.0 + 1e-6), 1e-9 * (1.0 + extent_x + extent_y))
    while (extent_x / cell + 1.0) * (extent_y / cell + 1.0) > 4.0 * n + 16.0:
        cell *= 2.0
    nx = int(extent_x / cell) + 1
    ny = int(extent_y / cell) + 1
    cell_x = np.empty(n, np.int64)
    cell_y = np.empty(n, np.int64)
    starts = np.zeros(nx * ny + 1, np.int64)
    for i in range(n):
        cell_x[i] = min(int((xy[i, 0] - x_min) / cell), nx - 1)
        cell_y[i] = min(int((xy[i, 1] - y_min) / cell), ny - 1)
        starts[cell_x[i] * ny + cell_y[i] + 1] += 1
    for c in range(nx * ny):
        starts[c + 1] += starts[c]
    fill = starts[:-1].copy()
    members = np.empty(n, np.int64)
    for i in range(n):
        c = cell_x[i] * ny + cell_y[i]
        members[fill[c]] = i
        fill[c] += 1
    return cell_x, cell_y, nx, ny, starts, members


@njit(cache=True)
def nms_rotated_sorted(boxes, cos_h, sin_h, iou_threshold, post_max_size):
    """Greedy NMS on boxes already sorted by descending score; returns kept positions (int64) in that order.

    A box is suppressed by an earlier kept box when their BEV IoU is strictly greater than iou_threshold.
    Only boxes whose bounding circles touch can overlap, so each kept box looks at the later, still-alive
    boxes in its 3 x 3 grid neighbourhood (cells of side 2 * the largest radius) instead of all N.
    """
    n = boxes.shape[0]
    keep = np.empty(n, np.int64)
    if n == 0:
        return keep
    radius = bev_radius(boxes)
    cell_x, cell_y, nx, ny, starts, members = _uniform_grid(boxes[:, :2], 2.0 * radius.max())
    suppressed = np.zeros(n, np.bool_)
    n_keep = 0
    work_a = np.empty((9, 2), np.float64)
    work_b = np.empty((9, 2), np.float64)
    rect_b = np.empty((4, 2), np.float64)
    for i in range(n):
        if suppressed[i]:
            continue
        if post_max_size >= 0 and n_keep >= post_max_size:
            break
        keep[n_keep] = i
        n_keep += 1
        for gx in range(max(cell_x[i] - 1, 0), min(cell_x[i] + 2, nx)):
            for gy in range(max(cell_y[i] - 1, 0), min(cell_y[i] + 2, ny)):
                c = gx * ny + gy
                for k in range(starts[c], starts[c + 1]):
                    j = members[k]
                    if j <= i or suppressed[j]:
                        continue
                    ddx = boxes[i, 0] - boxes[j, 0]
                    ddy = boxes[i, 1] - boxes[j, 1]
                    reach = radius[i] + radius[j]
                    if ddx * ddx + ddy * ddy > reach * reach:
                        continue
                    iou = _iou_pair(boxes[i], cos_h[i], sin_h[i], boxes[j], cos_h[j], sin_h[j], False,
                                    work_a, work_b, rect_b)
                    if iou > iou_threshold:
                        suppressed[j] = True
    return keep[:n_keep]


@njit(cache=True)
def nms_circle_sorted(centers, distance_threshold, post_max_size):
    """Greedy circle NMS on BEV centres (N, 2) sorted by descending score: a kept centre suppresses every
    later centre at Euclidean distance <= distance_threshold. Returns kept positions (int64)."""
    n = centers.shape[0]
    keep = np.empty(n, np.int64)
    if n == 0:
        return keep
    cell_x, cell_y, nx, ny, starts, members = _uniform_grid(centers, distance_threshold)
    suppressed = np.zeros(n, np.bool_)
    n_keep = 0
    limit = distance_threshold * distance_threshold
    for i in range(n):
        if suppressed[i]:
            continue
        if post_max_size >= 0 and n_keep >= post_max_size:
            break
        keep[n_keep] = i
        n_keep += 1
        for gx in range(max(cell_x[i] - 1, 0), min(cell_x[i] + 2, nx)):
            for gy in range(max(cell_y[i] - 1, 0), min(cell_y[i] + 2, ny)):
                c = gx * ny + gy
                for k in range(starts[c], starts[c + 1]):
                    j = members[k]
                    if j <= i or suppressed[j]:
                        continue
                    dx = centers[i, 0] - centers[j, 0]
                    dy = centers[i, 1] - centers[j, 1]
                    if dx * dx + dy * dy <= limit:
                        suppressed[j] = True
    return keep[:n_keep]
