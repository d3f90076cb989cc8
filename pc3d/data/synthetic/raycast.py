"""First-hit ray casting against primitives and an analytic ground (numba, parallel over rays).

All rays of one call share an origin (a spinning LiDAR or a depth camera). To avoid testing every
ray against every primitive, primitives are binned by the azimuth interval their bounding sphere
covers as seen from the origin; inside a bin they are sorted by the distance to the sphere, so a ray
stops scanning its bin as soon as the next sphere starts beyond its current nearest hit. Because only
the nearest positive hit is kept, occlusion and self-shadowing come out of the geometry itself.

Ground (optional): sphere tracing of `f(t) = z(t) - g(x(t), y(t))` with a Lipschitz bound of `f`
along the ray, started where the ray enters the band `|z - plane| <= sum |A_k|`; steps never
overshoot a crossing, so the first crossing is found.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from .ground import GroundModel
from .primitives import BOX, CYLINDER, Primitives

MISS = -1
GROUND = -2
_EPS = 1e-9
_GROUND_TOL = 2e-5
_GROUND_MAX_STEPS = 2000


@dataclass
class RayHits:
    """Result of `cast_rays` for R rays.

    distance (R,) float64 (inf for a miss); primitive (R,) int32: primitive index, `GROUND` (-2) or
    `MISS` (-1); normal (R, 3) float64 unit surface normal facing the ray; reflectivity (R,) float64.
    """

    distance: np.ndarray
    primitive: np.ndarray
    normal: np.ndarray
    reflectivity: np.ndarray


@numba.njit(cache=True, inline="always")
def _slab(o, d, h):
    """Entry / exit parameters of a ray against the slab |x| <= h along one axis."""
    if abs(d) < 1e-15:
        if abs(o) > h:
            return math.inf, -math.inf
        return -math.inf, math.inf
    t1 = (-h - o) / d
    t2 = (h - o) / d
    if t1 > t2:
        return t2, t1
    return t1, t2


@numba.njit(cache=True)
def _hit_box(ox, oy, oz, dx, dy, dz, hx, hy, hz):
    """Nearest entry of a ray into an origin-centred box; returns (t, nx, ny, nz) local, t=inf on a miss."""
    t1x, t2x = _slab(ox, dx, hx)
    t1y, t2y = _slab(oy, dy, hy)
    t1z, t2z = _slab(oz, dz, hz)
    t_near = t1x
    axis = 0
    if t1y > t_near:
        t_near = t1y
        axis = 1
    if t1z > t_near:
        t_near = t1z
        axis = 2
    t_far = min(t2x, t2y, t2z)
    if t_far < t_near or t_near <= _EPS:
        return math.inf, 0.0, 0.0, 0.0
    nx = 0.0
    ny = 0.0
    nz = 0.0
    if axis == 0:
        nx = -1.0 if dx > 0 else 1.0
    elif axis == 1:
        ny = -1.0 if dy > 0 else 1.0
    else:
        nz = -1.0 if dz > 0 else 1.0
    return t_near, nx, ny, nz


@numba.njit(cache=True)
def _hit_cylinder(ox, oy, oz, dx, dy, dz, radius, half_len):
    """Nearest hit on a capped cylinder along local z."""
    best = math.inf
    nx = 0.0
    ny = 0.0
    nz = 0.0
    a = dx * dx + dy * dy
    if a > 1e-18:
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - radius * radius
        disc = b * b - a * c
        if disc >= 0.0:
            t = (-b - math.sqrt(disc)) / a
            if t > _EPS:
                z = oz + t * dz
                if abs(z) <= half_len:
                    best = t
                    nx = (ox + t * dx) / radius
                    ny = (oy + t * dy) / radius
    if abs(dz) > 1e-18:
        for side in (1.0, -1.0):
            t = (side * half_len - oz) / dz
            if _EPS < t < best:
                x = ox + t * dx
                y = oy + t * dy
                if x * x + y * y <= radius * radius:
                    best = t
                    nx = 0.0
                    ny = 0.0
                    nz = side
    return best, nx, ny, nz


@numba.njit(cache=True)
def _hit_ellipsoid(ox, oy, oz, dx, dy, dz, a, b, c):
    px = ox / a
    py = oy / b
    pz = oz / c
    qx = dx / a
    qy = dy / b
    qz = dz / c
    aa = qx * qx + qy * qy + qz * qz
    bb = px * qx + py * qy + pz * qz
    cc = px * px + py * py + pz * pz - 1.0
    disc = bb * bb - aa * cc
    if disc < 0.0:
        return math.inf, 0.0, 0.0, 0.0
    t = (-bb - math.sqrt(disc)) / aa
    if t <= _EPS:
        return math.inf, 0.0, 0.0, 0.0
    x = ox + t * dx
    y = oy + t * dy
    z = oz + t * dz
    nx = x / (a * a)
    ny = y / (b * b)
    nz = z / (c * c)
    norm = math.sqrt(nx * nx + ny * ny + nz * nz)
    return t, nx / norm, ny / norm, nz / norm


@numba.njit(cache=True)
def _ground_f(x, y, z, ground, waves):
    h = ground[0] + ground[1] * x + ground[2] * y
    for k in range(waves.shape[0]):
        h += waves[k, 0] * math.sin(waves[k, 1] * x + waves[k, 2] * y + waves[k, 3])
    return z - h


@numba.njit(cache=True)
def _hit_ground(ox, oy, oz, dx, dy, dz, t_limit, ground, waves, bound):
    """Sphere-trace the heightfield up to `t_limit`; returns (t, nx, ny, nz) or t=inf."""
    linear0 = oz - (ground[0] + ground[1] * ox + ground[2] * oy)
    linear1 = dz - ground[1] * dx - ground[2] * dy
    if linear0 > bound:
        if linear1 >= 0.0:
            return math.inf, 0.0, 0.0, 0.0
        t = (linear0 - bound) / (-linear1)
    else:
        t = 0.0
    lip = abs(linear1)
    for k in range(waves.shape[0]):
        lip += abs(waves[k, 0]) * abs(waves[k, 1] * dx + waves[k, 2] * dy)
    if lip <= 0.0:
        return math.inf, 0.0, 0.0, 0.0
    hit = False
    for _ in range(_GROUND_MAX_STEPS):
        if t > t_limit:
            break
        f = _ground_f(ox + t * dx, oy + t * dy, oz + t * dz, ground, waves)
        if f <= _GROUND_TOL:
            hit = f > -1e-3  # below the surface only if the origin itself is underground
            break
        t += f / lip
    if not hit or t > t_limit:
        return math.inf, 0.0, 0.0, 0.0
    x = ox + t * dx
    y = oy + t * dy
    gx = ground[1]
    gy = ground[2]
    for k in range(waves.shape[0]):
        c = waves[k, 0] * math.cos(waves[k, 1] * x + waves[k, 2] * y + waves[k, 3])
        gx += waves[k, 1] * c
        gy += waves[k, 2] * c
    norm = math.sqrt(gx * gx + gy * gy + 1.0)
    return t, -gx / norm, -gy / norm, 1.0 / norm


@numba.njit(cache=True, parallel=True)
def _cast_kernel(origin, dirs, max_range, kinds, centers, rotations, sizes, radii, reflectivity,
                 bin_start, bin_items, bin_near, use_ground, ground, waves, ground_bound,
                 out_t, out_id, out_n, out_refl):
    num_bins = bin_start.shape[0] - 1
    ox = origin[0]
    oy = origin[1]
    oz = origin[2]
    for r in numba.prange(dirs.shape[0]):
        dx = dirs[r, 0]
        dy = dirs[r, 1]
        dz = dirs[r, 2]
        best = max_range
        best_id = MISS
        bnx = 0.0
        bny = 0.0
        bnz = 0.0
        b = int((math.atan2(dy, dx) + math.pi) / (2.0 * math.pi) * num_bins)
        if b >= num_bins:
            b = num_bins - 1
        if b < 0:
            b = 0
        for k in range(bin_start[b], bin_start[b + 1]):
            if bin_near[k] > best:
                break  # items are sorted by the distance to their bounding sphere
            p = bin_items[k]
            vx = centers[p, 0] - ox
            vy = centers[p, 1] - oy
            vz = centers[p, 2] - oz
            tc = vx * dx + vy * dy + vz * dz
            rad = radii[p]
            if tc + rad < 0.0:
                continue
            if vx * vx + vy * vy + vz * vz - tc * tc > rad * rad:
                continue
            # ray into the primitive's local frame: R^T (o - c), R^T d
            lx = -(rotations[p, 0, 0] * vx + rotations[p, 1, 0] * vy + rotations[p, 2, 0] * vz)
            ly = -(rotations[p, 0, 1] * vx + rotations[p, 1, 1] * vy + rotations[p, 2, 1] * vz)
            lz = -(rotations[p, 0, 2] * vx + rotations[p, 1, 2] * vy + rotations[p, 2, 2] * vz)
            ex = rotations[p, 0, 0] * dx + rotations[p, 1, 0] * dy + rotations[p, 2, 0] * dz
            ey = rotations[p, 0, 1] * dx + rotations[p, 1, 1] * dy + rotations[p, 2, 1] * dz
            ez = rotations[p, 0, 2] * dx + rotations[p, 1, 2] * dy + rotations[p, 2, 2] * dz
            kind = kinds[p]
            if kind == BOX:
                t, nx, ny, nz = _hit_box(lx, ly, lz, ex, ey, ez, sizes[p, 0], sizes[p, 1], sizes[p, 2])
            elif kind == CYLINDER:
                t, nx, ny, nz = _hit_cylinder(lx, ly, lz, ex, ey, ez, sizes[p, 0], sizes[p, 2])
            else:
                t, nx, ny, nz = _hit_ellipsoid(lx, ly, lz, ex, ey, ez, sizes[p, 0], sizes[p, 1], sizes[p, 2])
            if t < best:
                best = t
                best_id = p
                bnx = rotations[p, 0, 0] * nx + rotations[p, 0, 1] * ny + rotations[p, 0, 2] * nz
                bny = rotations[p, 1, 0] * nx + rotations[p, 1, 1] * ny + rotations[p, 1, 2] * nz
                bnz = rotations[p, 2, 0] * nx + rotations[p, 2, 1] * ny + rotations[p, 2, 2] * nz
        if use_ground:
            t, nx, ny, nz = _hit_ground(ox, oy, oz, dx, dy, dz, best, ground, waves, ground_bound)
            if t < best:
                best = t
                best_id = GROUND
                bnx = nx
                bny = ny
                bnz = nz
        if best_id == MISS:
            out_t[r] = math.inf
            out_id[r] = MISS
            out_refl[r] = 0.0
            continue
        # face the normal towards the sensor so the incidence cosine is |n . d| = -n . d
        if bnx * dx + bny * dy + bnz * dz > 0.0:
            bnx = -bnx
            bny = -bny
            bnz = -bnz
        out_t[r] = best
        out_id[r] = best_id
        out_n[r, 0] = bnx
        out_n[r, 1] = bny
        out_n[r, 2] = bnz
        out_refl[r] = ground[3] if best_id == GROUND else reflectivity[best_id]


def azimuth_bins(primitives: Primitives, origin: np.ndarray, num_bins: int = 720):
    """CSR lists of the primitives whose bounding sphere may be hit by a ray in each azimuth bin.

    Returns `(bin_start (B+1,) int64, bin_items (K,) int32, bin_near (K,) float64)`; within a bin the
    items are sorted by `bin_near` = distance from `origin` to the bounding sphere (0 if inside).
    """
    radii = primitives.bounding_radius()
    offset = primitives.centers - origin
    horizontal = np.hypot(offset[:, 0], offset[:, 1])
    near = np.maximum(np.linalg.norm(offset, axis=1) - radii, 0.0)
    phi = np.arctan2(offset[:, 1], offset[:, 0])
    width = 2.0 * np.pi / num_bins
    bins_of, items_of = [], []
    for p in np.argsort(near, kind="stable"):
        if horizontal[p] <= radii[p] * 1.0001 + 1e-9:
            span = np.arange(num_bins)  # the sphere surrounds the vertical through the origin
        else:
            alpha = np.arcsin(radii[p] / horizontal[p]) + 1e-6
            first = int(np.floor((phi[p] - alpha + np.pi) / width))
            last = int(np.floor((phi[p] + alpha + np.pi) / width))
            span = np.arange(first, last + 1) % num_bins
            span = np.unique(span)
        bins_of.append(span)
        items_of.append(np.full(span.shape[0], p, np.int32))
    if bins_of:
        all_bins = np.concatenate(bins_of)
        all_items = np.concatenate(items_of)
    else:
        all_bins = np.zeros(0, np.int64)
        all_items = np.zeros(0, np.int32)
    order = np.argsort(all_bins, kind="stable")  # stable: keeps the near-to-far order per bin
    bin_items = all_items[order]
    bin_start = np.zeros(num_bins + 1, np.int64)
    np.cumsum(np.bincount(all_bins, minlength=num_bins), out=bin_start[1:])
    return bin_start, bin_items, near[bin_items].astype(np.float64)


def cast_rays(origin, directions, primitives: Primitives, ground: GroundModel | None = None,
              max_range: float = np.inf, num_bins: int = 720) -> RayHits:
    """First hit of rays `origin (3,) + t * directions (R, 3)` (unit) with t < `max_range`."""
    origin = np.asarray(origin, np.float64).reshape(-1)
    if origin.shape != (3,) or not np.isfinite(origin).all():
        raise ValueError(f"origin must be 3 finite numbers, got {origin}")
    directions = np.ascontiguousarray(directions, np.float64)
    if directions.ndim != 2 or directions.shape[1] != 3:
        raise ValueError(f"directions must have shape (R, 3), got {directions.shape}")
    if not np.isfinite(directions).all():
        raise ValueError("directions contain NaN or inf")
    if directions.shape[0] and np.abs(np.linalg.norm(directions, axis=1) - 1.0).max() > 1e-6:
        raise ValueError("directions must be unit vectors")
    if not max_range > 0:
        raise ValueError(f"max_range must be positive, got {max_range}")
    bin_start, bin_items, bin_near = azimuth_bins(primitives, origin, num_bins)
    count = directions.shape[0]
    out_t = np.empty(count)
    out_id = np.empty(count, np.int32)
    out_n = np.zeros((count, 3))
    out_refl = np.empty(count)
    if ground is None:
        ground_params, waves, bound = np.zeros(4), np.zeros((0, 4)), 0.0
    else:
        ground_params, waves, bound = ground.params(), np.ascontiguousarray(ground.waves), ground.roughness_bound
    _cast_kernel(origin, directions, float(max_range), primitives.kinds, np.ascontiguousarray(primitives.centers),
                 np.ascontiguousarray(primitives.rotations), np.ascontiguousarray(primitives.sizes),
                 primitives.bounding_radius(), np.ascontiguousarray(primitives.reflectivity),
                 bin_start, bin_items, bin_near, ground is not None, ground_params, waves, float(bound),
                 out_t, out_id, out_n, out_refl)
    return RayHits(out_t, out_id, out_n, out_refl)
