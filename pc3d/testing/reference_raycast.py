"""Straightforward numpy ray caster: every ray against every primitive, vectorised over rays.

An independent reference for `raycast.cast_rays` (tests compare hit ids and distances) and the
baseline of `benchmarks/bench_simulator.py`. No acceleration structure; the ground uses the same
conservative sphere tracing, run for all rays at once.
"""
from __future__ import annotations

import numpy as np

from pc3d.data.synthetic.ground import GroundModel
from pc3d.data.synthetic.primitives import BOX, CYLINDER, Primitives
from pc3d.data.synthetic.raycast import GROUND, MISS

_EPS = 1e-9


def _box_t(o, d, half):
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-half - o) * inv
        t2 = (half - o) * inv
    # a ray parallel to a slab never crosses it: it misses when outside, is unconstrained when inside
    parallel = np.abs(d) < 1e-15
    outside = (parallel & (np.abs(o) > half)).any(axis=1)
    t1 = np.where(parallel, -np.inf, t1)
    t2 = np.where(parallel, np.inf, t2)
    near = np.minimum(t1, t2).max(axis=1)
    far = np.maximum(t1, t2).min(axis=1)
    return np.where(~outside & (far >= near) & (near > _EPS), near, np.inf)


def _cylinder_t(o, d, radius, half_len):
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - radius ** 2
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    z = o[:, 2] + t_side * d[:, 2]
    side_ok = (a > 1e-18) & (disc >= 0) & (t_side > _EPS) & (np.abs(z) <= half_len)
    best = np.where(side_ok, t_side, np.inf)
    for cap in (half_len, -half_len):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (cap - o[:, 2]) / d[:, 2]
        x = o[:, 0] + t * d[:, 0]
        y = o[:, 1] + t * d[:, 1]
        ok = (np.abs(d[:, 2]) > 1e-18) & (t > _EPS) & (x * x + y * y <= radius ** 2)
        best = np.where(ok & (t < best), t, best)
    return best


def _ellipsoid_t(o, d, axes):
    p = o / axes
    q = d / axes
    a = (q * q).sum(1)
    b = (p * q).sum(1)
    c = (p * p).sum(1) - 1.0
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _ground_t(origin, dirs, ground: GroundModel, t_limit, max_steps=2000, tol=2e-5):
    """Sphere tracing of z - g(x, y) for all rays at once (same bound as the numba kernel)."""
    waves = ground.waves
    bound = ground.roughness_bound
    linear0 = origin[2] - (ground.offset + ground.slope_x * origin[0] + ground.slope_y * origin[1])
    linear1 = dirs[:, 2] - ground.slope_x * dirs[:, 0] - ground.slope_y * dirs[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        start = np.where(linear0 > bound, (linear0 - bound) / -linear1, 0.0)
    alive = ~((linear0 > bound) & (linear1 >= 0))
    lip = np.abs(linear1) + (np.abs(waves[:, 0])[None] * np.abs(dirs[:, :2] @ waves[:, 1:3].T)).sum(1)
    alive &= lip > 0
    t = np.where(alive, start, np.inf)
    result = np.full(dirs.shape[0], np.inf)
    active = np.flatnonzero(alive)
    for _ in range(max_steps):
        if active.size == 0:
            break
        ta = t[active]
        over = ta > t_limit[active]
        p = origin + dirs[active] * ta[:, None]
        f = p[:, 2] - ground.height(p[:, 0], p[:, 1])
        done = (f <= tol) & ~over
        result[active[done & (f > -1e-3)]] = ta[done & (f > -1e-3)]
        stepping = ~done & ~over
        t[active[stepping]] = ta[stepping] + f[stepping] / lip[active[stepping]]
        active = active[stepping]
    return result


def cast_rays_reference(origin, directions, primitives: Primitives, ground: GroundModel | None = None,
                        max_range: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """`(distance (R,), primitive (R,))` of the first hit, like `raycast.cast_rays` (no normals)."""
    origin = np.asarray(origin, np.float64)
    dirs = np.asarray(directions, np.float64)
    best = np.full(dirs.shape[0], float(max_range))
    best_id = np.full(dirs.shape[0], MISS, np.int32)
    for p in range(len(primitives)):
        rot = primitives.rotations[p]
        o_local = np.broadcast_to((origin - primitives.centers[p]) @ rot, dirs.shape)
        d_local = dirs @ rot
        size = primitives.sizes[p]
        if primitives.kinds[p] == BOX:
            t = _box_t(o_local, d_local, size)
        elif primitives.kinds[p] == CYLINDER:
            t = _cylinder_t(o_local, d_local, size[0], size[2])
        else:
            t = _ellipsoid_t(o_local, d_local, size)
        closer = t < best
        best[closer] = t[closer]
        best_id[closer] = p
    if ground is not None:
        t = _ground_t(origin, dirs, ground, best)
        closer = t < best
        best[closer] = t[closer]
        best_id[closer] = GROUND
    best[best_id == MISS] = np.inf
    return best, best_id
