"""Software rasteriser (numpy): square point splats and thick line segments with a z-buffer.

The fallback when no OpenGL context can be made (CI without EGL). It uses the same `Camera` as the
Open3D backend, so both backends put every point and box edge on the same pixels.
"""
from __future__ import annotations

import numpy as np

from pc3d.viz.cameras import Camera
from pc3d.viz.colors import to_uint8

NEAR_PLANE = 0.05          # metres; geometry closer than this is clipped
LINE_DEPTH_BIAS = 0.995    # lines win the depth test against points on the same surface
MAX_SAMPLES_PER_SEGMENT = 20000


def _square_offsets(size: float) -> np.ndarray:
    """(K, 2) integer pixel offsets of a size x size square splat centred on the pixel."""
    s = max(1, int(round(size)))
    r = np.arange(-((s - 1) // 2), s // 2 + 1)
    du, dv = np.meshgrid(r, r)
    return np.stack([du.ravel(), dv.ravel()], axis=1)


def _splat(uv: np.ndarray, depth: np.ndarray, color_index: np.ndarray, size: float, width: int, height: int):
    """Expand samples to splats; returns (pixel index, depth, colour index) of the on-screen ones."""
    base = np.round(uv).astype(np.int64)
    offsets = _square_offsets(size)
    u = (base[:, None, 0] + offsets[None, :, 0]).ravel()
    v = (base[:, None, 1] + offsets[None, :, 1]).ravel()
    k = offsets.shape[0]
    d = np.repeat(depth, k)
    c = np.repeat(color_index, k)
    ok = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return v[ok] * width + u[ok], d[ok], c[ok]


def _sample_segments(camera: Camera, segments: np.ndarray):
    """Dense samples along (L, 2, 3) world segments: (uv (S, 2), depth (S,), segment index (S,))."""
    cam = camera.to_camera(segments.reshape(-1, 3)).reshape(-1, 2, 3)
    a, b = cam[:, 0].copy(), cam[:, 1].copy()
    # Clip against the near plane in camera space so segments passing behind the camera keep
    # their visible part instead of projecting to garbage.
    keep = (a[:, 2] > NEAR_PLANE) | (b[:, 2] > NEAR_PLANE)
    a, b, index = a[keep], b[keep], np.nonzero(keep)[0]
    for p, q in ((a, b), (b, a)):
        behind = p[:, 2] <= NEAR_PLANE
        if behind.any():
            t = (NEAR_PLANE - p[behind, 2]) / (q[behind, 2] - p[behind, 2])
            p[behind] = p[behind] + t[:, None] * (q[behind] - p[behind])
    if len(a) == 0:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0, dtype=np.int64)
    fx, fy, cx, cy = camera.intrinsic[0, 0], camera.intrinsic[1, 1], camera.intrinsic[0, 2], camera.intrinsic[1, 2]
    ua = np.stack([fx * a[:, 0] / a[:, 2] + cx, fy * a[:, 1] / a[:, 2] + cy], axis=1)
    ub = np.stack([fx * b[:, 0] / b[:, 2] + cx, fy * b[:, 1] / b[:, 2] + cy], axis=1)
    # Clip the projected segments to the image (Liang-Barsky) so a segment passing close to the
    # camera does not turn into millions of off-screen samples.
    pad = 4.0
    s0, s1 = np.zeros(len(a)), np.ones(len(a))
    delta = ub - ua
    for axis, limit in ((0, camera.width), (1, camera.height)):
        for p_coef, q_coef in ((-delta[:, axis], ua[:, axis] + pad), (delta[:, axis], limit - 1 + pad - ua[:, axis])):
            parallel = np.abs(p_coef) < 1e-12
            outside = parallel & (q_coef < 0)
            s0[outside], s1[outside] = 1.0, 0.0
            with np.errstate(divide="ignore", invalid="ignore"):
                r = q_coef / p_coef
            entering = ~parallel & (p_coef < 0)
            leaving = ~parallel & (p_coef > 0)
            s0 = np.where(entering, np.maximum(s0, r), s0)
            s1 = np.where(leaving, np.minimum(s1, r), s1)
    visible = s1 >= s0
    if not visible.any():
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0, dtype=np.int64)
    ua, ub, za, zb, s0, s1, index = (v[visible] for v in (ua, ub, a[:, 2], b[:, 2], s0, s1, index))
    length = np.linalg.norm(ub - ua, axis=1) * (s1 - s0)
    n = np.clip(np.ceil(length * 2.0).astype(np.int64) + 2, 2, MAX_SAMPLES_PER_SEGMENT)
    seg = np.repeat(np.arange(len(ua)), n)
    start = np.cumsum(n) - n
    frac = (np.arange(seg.shape[0]) - start[seg]) / (n[seg] - 1)
    t = s0[seg] + frac * (s1[seg] - s0[seg])
    uv = ua[seg] + t[:, None] * (ub[seg] - ua[seg])
    # 1/depth is linear in screen space (perspective-correct depth).
    depth = 1.0 / ((1.0 - t) / za[seg] + t / zb[seg])
    return uv, depth, index[seg]


def rasterize(camera: Camera, xyz: np.ndarray, colors: np.ndarray, segments: np.ndarray | None = None,
              segment_colors: np.ndarray | None = None, point_size: float = 2.0, line_width: float = 2.0,
              background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Render points (N, 3) with colours (N, 3) in [0, 1] and segments (L, 2, 3) -> uint8 (H, W, 3)."""
    width, height = camera.width, camera.height
    image = np.empty((height * width, 3), dtype=np.uint8)
    image[:] = to_uint8(np.asarray(background, dtype=np.float64))
    palettes, pix, dep, col = [], [], [], []
    offset = 0
    if xyz is not None and len(xyz):
        uv, depth = camera.project(xyz)
        front = depth > NEAR_PLANE
        p, d, c = _splat(uv[front], depth[front], np.nonzero(front)[0], point_size, width, height)
        pix.append(p), dep.append(d), col.append(c)
        palettes.append(to_uint8(colors))
        offset += len(xyz)
    if segments is not None and len(segments):
        uv, depth, seg = _sample_segments(camera, np.asarray(segments, dtype=np.float64))
        p, d, c = _splat(uv, depth * LINE_DEPTH_BIAS, seg + offset, line_width, width, height)
        pix.append(p), dep.append(d), col.append(c)
        palettes.append(to_uint8(segment_colors))
    if pix:
        pix, dep, col = np.concatenate(pix), np.concatenate(dep), np.concatenate(col)
        palette = np.concatenate(palettes)
        # z-buffer: nearest sample per pixel wins.
        order = np.lexsort((dep, pix))
        first = np.concatenate([[True], pix[order][1:] != pix[order][:-1]]) if len(order) else order
        winners = order[first]
        image[pix[winners]] = palette[col[winners]]
    return image.reshape(height, width, 3)
