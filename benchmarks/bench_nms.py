"""Rotated NMS and rotated BEV IoU speed: pc3d (numba, torch) vs a straightforward shapely implementation.

    python benchmarks/bench_nms.py [--points FILE --dim N --json --repeat K]

Rows:
- `nms_rotated/random5k/<backend>`: greedy rotated NMS (IoU > 0.1 suppresses) on 5,000 random boxes
  (car/pedestrian-like sizes, centres uniform over 100 m x 100 m, plus 5 jittered copies of 200 of them
  so that suppression really happens). Reference: shapely polygons, an STRtree query for the pairs that
  intersect, vectorised `shapely.intersection` areas, then the same greedy loop in Python.
- `nms_rotated/<scan>/<backend>` (only with --points): 5,000 boxes scattered uniformly over the scan's
  BEV extent (1st-99th percentile of x and y).
- `iou_bev/400x400/<backend>`: full (400, 400) BEV IoU matrix of boxes in a 30 m x 30 m patch vs
  `shapely.intersection` on all 160,000 polygon pairs.
`identical`: same kept indices in the same order (NMS) / max |IoU difference| <= 1e-9 (IoU).
shapely runs its default floating-point overlay (snap-rounding `grid_size=` is ~3x slower; the tests use
it because the floating overlay can fail on nested rectangles with collinear edges, which random boxes
never produce).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import shapely
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, report, time_call  # noqa: E402

from pc3d.ops.box_geometry import box_iou_bev, boxes_to_corners_3d, nms_rotated  # noqa: E402

IOU_THRESHOLD = 0.1
NUM_BOXES = 5000


def random_boxes(rng: np.random.Generator, n: int, centers_xy: np.ndarray | None = None, extent: float = 50.0):
    """(n, 7) float32 boxes: 60 % car-like (4.5 x 1.9), 40 % pedestrian-like (0.7 x 0.7), +-30 % sizes."""
    boxes = np.zeros((n, 7), np.float64)
    boxes[:, :2] = rng.uniform(-extent, extent, (n, 2)) if centers_xy is None else centers_xy
    car = rng.random(n) < 0.6
    boxes[:, 3:6] = np.where(car[:, None], [4.5, 1.9, 1.6], [0.7, 0.7, 1.7]) * rng.uniform(0.7, 1.3, (n, 3))
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, n)
    return boxes.astype(np.float32)


def with_duplicates(rng: np.random.Generator, boxes: np.ndarray, originals: int = 200, copies: int = 5):
    """Replace the last originals*copies rows by jittered copies of the first `originals` boxes."""
    boxes = boxes.copy()
    dup = np.repeat(boxes[:originals], copies, axis=0)
    dup[:, :2] += rng.normal(scale=0.3, size=(len(dup), 2))
    dup[:, 6] += rng.normal(scale=0.1, size=len(dup))
    boxes[-len(dup):] = dup
    return boxes


def shapely_polygons(boxes: np.ndarray) -> np.ndarray:
    return shapely.polygons(boxes_to_corners_3d(boxes.astype(np.float64))[:, :4, :2])


def shapely_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Straightforward reference: STRtree candidate pairs, shapely IoU, Python greedy loop."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    polys = shapely_polygons(boxes[order])
    tree = shapely.STRtree(polys)
    first, second = tree.query(polys, predicate="intersects")
    later = second > first
    first, second = first[later], second[later]
    inter = shapely.area(shapely.intersection(polys[first], polys[second]))
    areas = shapely.area(polys)
    iou = inter / np.maximum(areas[first] + areas[second] - inter, 1e-12)
    overlapping = iou > threshold
    neighbours = [[] for _ in range(len(polys))]
    for i, j in zip(first[overlapping].tolist(), second[overlapping].tolist()):
        neighbours[i].append(j)
    suppressed = np.zeros(len(polys), bool)
    keep = []
    for i in range(len(polys)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[neighbours[i]] = True
    return order[np.asarray(keep, np.int64)]


def shapely_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    pa, pb = shapely_polygons(a), shapely_polygons(b)
    inter = shapely.area(shapely.intersection(pa[:, None], pb[None, :]))
    union = shapely.area(pa)[:, None] + shapely.area(pb)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def bench_nms(name: str, boxes: np.ndarray, scores: np.ndarray, args) -> None:
    reference_keep = shapely_nms(boxes, scores, IOU_THRESHOLD)
    reference_seconds = time_call(lambda: shapely_nms(boxes, scores, IOU_THRESHOLD), repeat=max(1, args.repeat // 2))
    for backend, (b, s) in (("numba", (boxes, scores)), ("torch", (torch.from_numpy(boxes), torch.from_numpy(scores)))):
        keep = np.asarray(nms_rotated(b, s, IOU_THRESHOLD, backend=backend))
        seconds = time_call(lambda: nms_rotated(b, s, IOU_THRESHOLD, backend=backend), repeat=args.repeat)
        report(f"nms_rotated/{name}/{backend}", seconds, "shapely_strtree_greedy", reference_seconds,
               bool(np.array_equal(keep, reference_keep)), args.json, boxes=len(boxes), kept=len(keep))


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)

    boxes = with_duplicates(rng, random_boxes(rng, NUM_BOXES))
    scores = rng.random(NUM_BOXES).astype(np.float32)
    bench_nms("random5k", boxes, scores, args)

    if args.points is not None:
        from pc3d.io.points import read_points
        points = read_points(args.points, dim=args.dim)
        xyz = points[np.isfinite(points[:, :3]).all(axis=1), :3].astype(np.float64)
        # uniform over the scan's BEV extent (1st-99th percentile, so a few far returns do not stretch it)
        low, high = np.percentile(xyz[:, :2], 1, axis=0), np.percentile(xyz[:, :2], 99, axis=0)
        scan_boxes = random_boxes(rng, NUM_BOXES, centers_xy=rng.uniform(low, high, (NUM_BOXES, 2)))
        scan_boxes[:, 2] = np.median(xyz[:, 2])
        bench_nms(args.points.name, scan_boxes, rng.random(NUM_BOXES).astype(np.float32), args)

    # float64 boxes so that pc3d returns float64 IoU, comparable to shapely at 1e-9
    a = random_boxes(rng, 400, extent=15.0).astype(np.float64)
    b = random_boxes(rng, 400, extent=15.0).astype(np.float64)
    reference = shapely_iou_matrix(a, b)
    reference_seconds = time_call(lambda: shapely_iou_matrix(a, b), repeat=max(1, args.repeat // 2))
    for backend, (x, y) in (("numba", (a, b)), ("torch", (torch.from_numpy(a), torch.from_numpy(b)))):
        iou = np.asarray(box_iou_bev(x, y, backend=backend), dtype=np.float64)
        seconds = time_call(lambda: box_iou_bev(x, y, backend=backend), repeat=args.repeat)
        max_diff = float(np.abs(iou - reference).max())
        report(f"iou_bev/400x400/{backend}", seconds, "shapely_intersection", reference_seconds,
               max_diff <= 1e-9, args.json, overlapping_pairs=int((reference > 0).sum()), max_abs_diff=max_diff)


if __name__ == "__main__":
    main()
