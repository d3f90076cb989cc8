"""Pinhole cameras and the view presets (bird's-eye, chase, fitted overview).

One `Camera` drives every backend: Open3D's legacy visualizer gets it through
`PinholeCameraParameters` and the software rasteriser projects with `Camera.project`, so a test (or a
caller placing labels) can compute exactly where a 3D point lands in the image.

Conventions: `extrinsic` (4, 4) maps world (pc3d frame: x forward, y left, z up) to the OpenCV camera
frame (x right, y down, z forward). `intrinsic` (3, 3) has fx == fy and the principal point at
(W/2 - 0.5, H/2 - 0.5): pixel (i, j) is centred at integer coordinates, which is what Open3D's
legacy visualizer renders. The vertical field of view stays in [5, 90] degrees because that is the
range Open3D's legacy view control accepts for a perspective camera.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VIEWS = ("bev", "chase", "overview")
FOV_MIN_DEG, FOV_MAX_DEG = 6.0, 89.0
BEV_FOV_DEG = 12.0  # narrow lens from high up: near-orthographic (< 1% scale change over 4 m of height)


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: intrinsic (3, 3), extrinsic (4, 4) world -> camera, image size in pixels."""

    intrinsic: np.ndarray
    extrinsic: np.ndarray
    width: int
    height: int

    @property
    def eye(self) -> np.ndarray:
        """(3,) camera centre in world coordinates."""
        rot, trans = self.extrinsic[:3, :3], self.extrinsic[:3, 3]
        return -rot.T @ trans

    @property
    def fov_y_deg(self) -> float:
        return float(np.degrees(2.0 * np.arctan(self.height / (2.0 * self.intrinsic[1, 1]))))

    def to_camera(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) camera-frame points (z = depth along the optical axis)."""
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        return xyz @ self.extrinsic[:3, :3].T + self.extrinsic[:3, 3]

    def project(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points -> (uv (N, 2) pixel coordinates, depth (N,)).

        Pixel (row v, column u) of the rendered image is at `round(uv)`; points with depth <= 0 are
        behind the camera and get NaN uv.
        """
        cam = self.to_camera(xyz)
        depth = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.intrinsic[0, 0] * cam[:, 0] / depth + self.intrinsic[0, 2]
            v = self.intrinsic[1, 1] * cam[:, 1] / depth + self.intrinsic[1, 2]
        uv = np.stack([u, v], axis=1)
        uv[depth <= 0] = np.nan
        return uv, depth


def _intrinsic(width: int, height: int, fov_y_deg: float) -> np.ndarray:
    fov = float(np.clip(fov_y_deg, FOV_MIN_DEG, FOV_MAX_DEG))
    f = (height / 2.0) / np.tan(np.radians(fov) / 2.0)
    return np.array([[f, 0.0, width / 2.0 - 0.5], [0.0, f, height / 2.0 - 0.5], [0.0, 0.0, 1.0]])


def _check_size(width: int, height: int) -> tuple[int, int]:
    if int(width) != width or int(height) != height or width < 16 or height < 16 or width > 8192 or height > 8192:
        raise ValueError(f"image size must be integers in [16, 8192], got width={width}, height={height}")
    return int(width), int(height)


def _extrinsic(rotation_rows: np.ndarray, eye: np.ndarray) -> np.ndarray:
    ext = np.eye(4)
    ext[:3, :3] = rotation_rows
    ext[:3, 3] = -rotation_rows @ eye
    return ext


def look_at(eye, target, width: int, height: int, fov_y_deg: float = 50.0, up=(0.0, 0.0, 1.0)) -> Camera:
    """Perspective camera at `eye` looking at `target` with world `up` pointing up in the image."""
    width, height = _check_size(width, height)
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    forward = target - eye
    if np.linalg.norm(forward) < 1e-9:
        raise ValueError("look_at: eye and target coincide")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # looking along `up`: any perpendicular works
        right = np.cross(forward, [1.0, 0.0, 0.0] if abs(forward[0]) < 0.9 else [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return Camera(_intrinsic(width, height, fov_y_deg), _extrinsic(np.stack([right, down, forward]), eye), width, height)


def robust_bounds(xyz: np.ndarray, extra: np.ndarray | None = None, low: float = 1.0, high: float = 99.0):
    """(min (3,), max (3,)) of the points between two percentiles, widened to include `extra` (K, 3)."""
    parts = []
    if xyz is not None and len(xyz):
        parts.append(np.percentile(xyz[:, :3], [low, high], axis=0))
    if extra is not None and len(extra):
        parts.append(np.stack([extra.min(axis=0), extra.max(axis=0)]))
    if not parts:
        return np.array([-10.0, -10.0, -2.0]), np.array([10.0, 10.0, 2.0])
    stacked = np.concatenate(parts)
    return stacked.min(axis=0), stacked.max(axis=0)


def bev_camera(width: int, height: int, xy_range=None, xyz: np.ndarray | None = None,
               extra: np.ndarray | None = None, ground_z: float | None = None, margin: float = 2.0) -> Camera:
    """Top-down camera: +x (forward) points up in the image, +y (left) to the left.

    xy_range: `(x_min, y_min, x_max, y_max)` metres to fit; default = the 1-99 percentile extent of
    `xyz` plus `extra` (box corners) and the ego origin, plus `margin`. The range is widened to the
    image aspect ratio and centred.
    """
    width, height = _check_size(width, height)
    if xy_range is None:
        lo, hi = robust_bounds(xyz, extra)
        x_min, y_min = min(lo[0], 0.0) - margin, min(lo[1], 0.0) - margin
        x_max, y_max = max(hi[0], 0.0) + margin, max(hi[1], 0.0) + margin
    else:
        x_min, y_min, x_max, y_max = (float(v) for v in xy_range)
        if not (x_max > x_min and y_max > y_min):
            raise ValueError(f"xy_range must be (x_min, y_min, x_max, y_max) with max > min, got {xy_range}")
    if ground_z is None:
        ground_z = float(np.percentile(xyz[:, 2], 5)) if xyz is not None and len(xyz) else 0.0
    center = np.array([(x_min + x_max) / 2.0, (y_min + y_max) / 2.0])
    # Image rows follow -x and columns follow -y; fit the larger of the two demands.
    metres_per_pixel = max((x_max - x_min) / height, (y_max - y_min) / width)
    intrinsic = _intrinsic(width, height, BEV_FOV_DEG)
    altitude = intrinsic[1, 1] * metres_per_pixel
    eye = np.array([center[0], center[1], ground_z + altitude])
    rows = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    return Camera(intrinsic, _extrinsic(rows, eye), width, height)


def chase_camera(width: int, height: int, xyz: np.ndarray | None = None, behind: float = 12.0,
                 above: float = 7.0, look_ahead: float = 20.0, fov_y_deg: float = 55.0,
                 ground_z: float | None = None) -> Camera:
    """Third-person view from behind and above the ego vehicle (at the origin), looking forward."""
    if ground_z is None:
        ground_z = 0.0
        if xyz is not None and len(xyz):
            near = xyz[np.hypot(xyz[:, 0], xyz[:, 1]) < 30.0]
            ground_z = float(np.percentile((near if len(near) else xyz)[:, 2], 5))
    eye = np.array([-behind, 0.0, ground_z + above])
    target = np.array([look_ahead, 0.0, ground_z])
    return look_at(eye, target, width, height, fov_y_deg)


def overview_camera(width: int, height: int, xyz: np.ndarray | None = None, extra: np.ndarray | None = None,
                    azimuth_deg: float = -150.0, elevation_deg: float = 35.0, fov_y_deg: float = 40.0) -> Camera:
    """Oblique perspective view that fits the robust extent of the scene (points + `extra`).

    azimuth is the direction from the scene centre to the camera, CCW from +x (-150 = behind, right).
    """
    lo, hi = robust_bounds(xyz, extra, 2.0, 98.0)
    center = (lo + hi) / 2.0
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    direction = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    return fit_distance(center, direction, corners, width, height, fov_y_deg)


def fit_distance(center, direction, corners: np.ndarray, width: int, height: int, fov_y_deg: float,
                 up=(0.0, 0.0, 1.0), border: float = 0.04) -> Camera:
    """Camera looking at `center` from along `direction`, as close as keeps all `corners` in frame.

    Bisects the distance so the given points fill the image up to a `border` fraction: tighter than
    fitting the bounding sphere, which leaves most of a flat driving scene empty.
    """
    center = np.asarray(center, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    direction = direction / np.linalg.norm(direction)
    radius = max(float(np.linalg.norm(corners - center, axis=1).max()), 1e-3)
    near, far = 1e-3, 4.0 * radius / np.sin(np.radians(min(fov_y_deg, 89.0)) / 2.0) + radius
    for _ in range(40):
        mid = 0.5 * (near + far)
        cam = look_at(center + mid * direction, center, width, height, fov_y_deg, up)
        uv, depth = cam.project(corners)
        fits = bool((depth > 0).all()) and bool((uv[:, 0] >= border * width).all()) \
            and bool((uv[:, 0] <= (1 - border) * width).all()) and bool((uv[:, 1] >= border * height).all()) \
            and bool((uv[:, 1] <= (1 - border) * height).all())
        near, far = (near, mid) if fits else (mid, far)
    return look_at(center + far * direction, center, width, height, fov_y_deg, up)


def principal_axes_camera(xyz: np.ndarray, width: int, height: int, fov_y_deg: float = 40.0,
                          tilt_deg: float = 25.0, sensor_origin=(0.0, 0.0, 0.0)) -> Camera:
    """Generic fitted view for any cloud (LiDAR scan or RGB-D fragment), e.g. for registration.

    Looks along the cloud's thinnest principal axis (the surface normal of a scan: top-down for a
    LiDAR sweep, face-on for an RGB-D fragment), from the side of `sensor_origin`, tilted by
    `tilt_deg` so depth is visible; the longest axis runs across the image.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    lo, hi = robust_bounds(xyz, None, 1.0, 99.0)
    keep = np.all((xyz >= lo) & (xyz <= hi), axis=1)
    core = xyz[keep] if keep.sum() >= 3 else xyz
    center = core.mean(axis=0)
    _, _, vt = np.linalg.svd(core - center, full_matrices=False)
    long_axis, mid_axis, thin_axis = vt[0], vt[1], vt[2]
    to_sensor = np.asarray(sensor_origin, dtype=np.float64) - center
    if thin_axis @ to_sensor < 0:
        thin_axis = -thin_axis
    # Up in the image: the middle axis, oriented towards world +z (or -y, "up" in camera frames).
    up = mid_axis if (mid_axis @ [0.0, 0.0, 1.0] > 1e-3 or
                      (abs(mid_axis[2]) <= 1e-3 and mid_axis @ [0.0, -1.0, 0.0] >= 0)) else -mid_axis
    tilt = np.radians(tilt_deg)
    direction = np.cos(tilt) * thin_axis - np.sin(tilt) * up
    local = (core - center) @ vt.T
    q_lo, q_hi = np.percentile(local, 1, axis=0), np.percentile(local, 99, axis=0)
    corners = np.array([[a, b, c] for a in (q_lo[0], q_hi[0]) for b in (q_lo[1], q_hi[1])
                        for c in (q_lo[2], q_hi[2])]) @ vt + center
    return fit_distance(center, direction, corners, width, height, fov_y_deg, up)


def refit_camera(camera: Camera, xyz: np.ndarray, width: int | None = None, height: int | None = None) -> Camera:
    """Same viewing direction, up vector and field of view as `camera`, re-framed to fit `xyz` (N, 3)."""
    width, height = width or camera.width, height or camera.height
    rows = camera.extrinsic[:3, :3]
    local = np.asarray(xyz, dtype=np.float64) @ rows.T
    lo, hi = np.percentile(local, 1, axis=0), np.percentile(local, 99, axis=0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]) @ rows
    center = ((lo + hi) / 2.0) @ rows
    return fit_distance(center, -rows[2], corners, width, height, camera.fov_y_deg, up=-rows[1])


def make_camera(view: str, width: int, height: int, xyz: np.ndarray | None = None,
                extra: np.ndarray | None = None, **kwargs) -> Camera:
    """Camera preset by name: "bev" | "chase" | "overview" (kwargs go to the preset)."""
    if view == "bev":
        return bev_camera(width, height, xyz=xyz, extra=extra, **kwargs)
    if view == "chase":
        return chase_camera(width, height, xyz=xyz, **kwargs)
    if view == "overview":
        return overview_camera(width, height, xyz=xyz, extra=extra, **kwargs)
    raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
