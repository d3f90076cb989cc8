"""numba kernels that reproduce the tie-breaking of the CUDA `pointops` kNN and furthest-point sampling.

Why: 3DMatch fragments lie on a few-mm lattice, so equal squared distances are common, and which of two
equidistant points a kNN or FPS returns decides every later output of a model built on them. These
kernels follow the reference kernels' visiting order and comparisons exactly (see `point_ops.knn_pointops`
and `point_ops.farthest_point_sample_pointops` for the rules in words).

Squared distances are fp32 as the CUDA build computes them: nvcc (default `--fmad=true`) contracts the written
`dx*dx + dy*dy + dz*dz` into `fma(dz, dz, fma(dx, dx, dy*dy))`. Checked against the kernels compiled with
nvcc -O2 on an H200: every index and distance equal (tests/ops/test_pointops_ties.py); the plain
left-to-right fp32 sum disagrees on 1-ulp differences that reorder lattice ties.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _fma32(a, b, c):
    """Correctly rounded fp32 `a * b + c` of fp32 inputs: the product is exact in float64; TwoSum keeps the
    error of the float64 sum, which decides the one case float64 -> float32 rounding gets wrong (a float64
    sum lying exactly half-way between two float32 values)."""
    p = np.float64(a) * np.float64(b)
    c64 = np.float64(c)
    s = p + c64
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)
    r = np.float32(s)
    r64 = np.float64(r)
    if err == 0.0 or r64 == s:
        return r
    other = np.nextafter(r, np.float32(np.inf)) if s > r64 else np.nextafter(r, np.float32(-np.inf))
    if s == (r64 + np.float64(other)) * 0.5:
        return max(r, other) if err > 0 else min(r, other)
    return r


@numba.njit(cache=True, inline="always")
def _sq_dist(ax, ay, az, bx, by, bz):
    dx = np.float32(ax - bx)
    dy = np.float32(ay - by)
    dz = np.float32(az - bz)
    return _fma32(dz, dz, _fma32(dx, dx, np.float32(dy * dy)))


@numba.njit(cache=True)
def _sift_down(dist, idx, size):
    # max-heap sift from the root; on equal children the left one is taken, and an equal parent still
    # swaps (only a strictly larger parent stops), exactly as the reference heap does
    root = 0
    child = 1
    while child < size:
        if child + 1 < size and dist[child + 1] > dist[child]:
            child += 1
        if dist[root] > dist[child]:
            return
        tmp_d = dist[root]
        dist[root] = dist[child]
        dist[child] = tmp_d
        tmp_i = idx[root]
        idx[root] = idx[child]
        idx[child] = tmp_i
        root = child
        child = 2 * root + 1


@numba.njit(cache=True)
def knn_heap(support, query, k):
    """`(idx (M, k) int64, sq_dist (M, k) float32)`; support/query are float32 `(N, 3)` / `(M, 3)`."""
    m = query.shape[0]
    out_idx = np.empty((m, k), np.int64)
    out_d2 = np.empty((m, k), np.float32)
    dist = np.empty(k, np.float32)
    idx = np.empty(k, np.int64)
    for p in range(m):
        qx, qy, qz = query[p, 0], query[p, 1], query[p, 2]
        for i in range(k):
            dist[i] = np.float32(1e10)
            idx[i] = 0
        for i in range(support.shape[0]):
            d2 = _sq_dist(qx, qy, qz, support[i, 0], support[i, 1], support[i, 2])
            if d2 < dist[0]:  # strict: an equal candidate never displaces the current worst
                dist[0] = d2
                idx[0] = i
                _sift_down(dist, idx, k)
        for i in range(k - 1, 0, -1):  # in-place heap sort, ascending
            tmp_d = dist[0]
            dist[0] = dist[i]
            dist[i] = tmp_d
            tmp_i = idx[0]
            idx[0] = idx[i]
            idx[i] = tmp_i
            _sift_down(dist, idx, i)
        out_idx[p] = idx
        out_d2[p] = dist
    return out_idx, out_d2


@numba.njit(cache=True)
def fps_block_reduce(points, m, block):
    """Furthest-point sampling of `m` indices from float32 `points (N, 3)`, starting at index 0.

    `block` lanes each scan `k = lane, lane + block, ...` keeping their first strict maximum; the lanes
    are then reduced pairwise (lane t against t + s for s = block/2 .. 1), the lower lane winning ties.
    """
    n = points.shape[0]
    out = np.empty(m, np.int64)
    min_d2 = np.full(n, np.float32(1e10), np.float32)
    lane_best = np.empty(block, np.float32)
    lane_idx = np.empty(block, np.int64)
    old = 0
    out[0] = 0
    for j in range(1, m):
        ox, oy, oz = points[old, 0], points[old, 1], points[old, 2]
        for lane in range(block):
            best = np.float32(-1.0)
            besti = 0
            for k in range(lane, n, block):
                d = _sq_dist(points[k, 0], points[k, 1], points[k, 2], ox, oy, oz)
                d2 = min(d, min_d2[k])
                min_d2[k] = d2
                if d2 > best:
                    best = d2
                    besti = k
            lane_best[lane] = best
            lane_idx[lane] = besti
        s = block // 2
        while s >= 1:
            for t in range(s):
                v1 = lane_best[t]
                v2 = lane_best[t + s]
                if v2 > v1:
                    lane_best[t] = v2
                    lane_idx[t] = lane_idx[t + s]
            s //= 2
        old = lane_idx[0]
        out[j] = old
    return out
