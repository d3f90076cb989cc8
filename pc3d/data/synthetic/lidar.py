"""Spinning multi-beam LiDAR: beam pattern, first-return ray casting, range noise, dropout, intensity.

The sensor sits at `(0, 0, sensor_height)` above the ego origin (docs/conventions.md, synthetic
frame). Every (beam, azimuth column) pair is one ray; a ray returns at most one point (first hit).
Intensity is Lambertian: material reflectivity x cos(incidence angle), with multiplicative noise,
clipped to [0, 1]. Returns are lost at random (`dropout`) and when too weak for their range
(`return_threshold`), so dark cars and grazing ground thin out far away.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from pc3d.structures import Frame, PointCloud

from .labels import scene_labels
from .raycast import MISS, cast_rays
from .scene import Scene, SceneConfig, generate_scene

POINT_FEATURES = ("x", "y", "z", "intensity")

# Velodyne VLP-32C elevation table (degrees): dense around the horizon, sparse at the edges.
_VLP32C_ELEVATIONS = (-25.0, -15.639, -11.31, -8.843, -7.254, -6.148, -5.333, -4.667, -4.0, -3.667, -3.333,
                      -3.0, -2.667, -2.333, -2.0, -1.667, -1.333, -1.0, -0.667, -0.333, 0.0, 0.333, 0.667,
                      1.0, 1.333, 1.667, 2.333, 3.333, 4.667, 7.0, 10.333, 15.0)


@dataclass
class LidarConfig:
    """Beam pattern and sensor model.

    `beam_spacing`: "uniform" or "horizon_dense" (spacing grows from the top of the FOV downwards,
    like Waymo's top LiDAR); `beam_elevations_deg` overrides both when given.
    """

    num_beams: int = 64
    vertical_fov_deg: tuple[float, float] = (-17.6, 2.4)
    beam_spacing: str = "horizon_dense"
    beam_elevations_deg: tuple[float, ...] | None = None
    azimuth_resolution_deg: float = 0.16
    max_range: float = 75.0
    min_range: float = 1.0
    range_noise_std: float = 0.02
    dropout: float = 0.03
    intensity_noise_std: float = 0.05
    # weak returns are lost: a return is kept when intensity >= return_threshold * (range / 10 m)^2,
    # so dark surfaces and grazing ground thin out with range, as on real sensors
    return_threshold: float = 0.0005
    sensor_height: float = 2.1
    name: str = "custom"

    def __post_init__(self):
        if self.num_beams < 1:
            raise ValueError(f"LidarConfig.num_beams must be >= 1, got {self.num_beams}")
        low, high = self.vertical_fov_deg
        if not (-90.0 <= low < high <= 90.0) and self.beam_elevations_deg is None:
            raise ValueError(f"LidarConfig.vertical_fov_deg must satisfy -90 <= low < high <= 90, got {(low, high)}")
        if self.beam_spacing not in ("uniform", "horizon_dense"):
            raise ValueError(f"LidarConfig.beam_spacing must be 'uniform' or 'horizon_dense', got {self.beam_spacing!r}")
        if self.beam_elevations_deg is not None and len(self.beam_elevations_deg) != self.num_beams:
            raise ValueError(f"LidarConfig.beam_elevations_deg has {len(self.beam_elevations_deg)} angles "
                             f"for {self.num_beams} beams")
        if not 0.0 < self.azimuth_resolution_deg <= 90.0:
            raise ValueError(f"LidarConfig.azimuth_resolution_deg must be in (0, 90], got {self.azimuth_resolution_deg}")
        if not 0.0 <= self.min_range < self.max_range:
            raise ValueError(f"LidarConfig needs 0 <= min_range < max_range, got {self.min_range}, {self.max_range}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LidarConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.return_threshold < 0:
            raise ValueError(f"LidarConfig.return_threshold must be >= 0, got {self.return_threshold}")
        if self.range_noise_std < 0 or self.intensity_noise_std < 0:
            raise ValueError("LidarConfig noise standard deviations must be >= 0")
        if not self.sensor_height > 0:
            raise ValueError(f"LidarConfig.sensor_height must be positive, got {self.sensor_height}")

    @classmethod
    def preset(cls, name: str) -> "LidarConfig":
        """"waymo64" (Waymo top LiDAR-like), "hdl64" (KITTI HDL-64E), "vlp32" (VLP-32C), "tiny16" (tests)."""
        if name == "waymo64":
            return cls(name=name)
        if name == "hdl64":
            return cls(num_beams=64, vertical_fov_deg=(-24.9, 2.0), beam_spacing="uniform", azimuth_resolution_deg=0.17,
                       max_range=100.0, sensor_height=1.73, name=name)
        if name == "vlp32":
            return cls(num_beams=32, vertical_fov_deg=(-25.0, 15.0), beam_elevations_deg=_VLP32C_ELEVATIONS,
                       azimuth_resolution_deg=0.2, max_range=100.0, range_noise_std=0.03, sensor_height=1.8, name=name)
        if name == "tiny16":
            return cls(num_beams=16, vertical_fov_deg=(-15.0, 1.0), beam_spacing="uniform", azimuth_resolution_deg=1.0,
                       max_range=40.0, name=name)
        raise ValueError(f"unknown LidarConfig preset {name!r}; choose waymo64, hdl64, vlp32 or tiny16")

    @property
    def num_azimuths(self) -> int:
        return int(round(360.0 / self.azimuth_resolution_deg))

    def elevations_deg(self) -> np.ndarray:
        """(num_beams,) beam elevation angles, top beam first."""
        if self.beam_elevations_deg is not None:
            return np.sort(np.asarray(self.beam_elevations_deg, np.float64))[::-1].copy()
        low, high = self.vertical_fov_deg
        s = np.linspace(0.0, 1.0, self.num_beams)
        if self.beam_spacing == "horizon_dense":
            s = s ** 1.5
        return high - (high - low) * s

    def ray_directions(self, azimuth_offset_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Unit directions `(num_beams * num_azimuths, 3)` (beam-major) and the beam index of each ray."""
        elev = np.deg2rad(self.elevations_deg())
        azim = np.deg2rad(azimuth_offset_deg + self.azimuth_resolution_deg * np.arange(self.num_azimuths)) - np.pi
        ce, se = np.cos(elev)[:, None], np.sin(elev)[:, None]
        dirs = np.stack([np.broadcast_to(ce * np.cos(azim), (elev.size, azim.size)),
                         np.broadcast_to(ce * np.sin(azim), (elev.size, azim.size)),
                         np.broadcast_to(se, (elev.size, azim.size))], axis=-1).reshape(-1, 3)
        beams = np.repeat(np.arange(elev.size, dtype=np.int16), azim.size)
        return np.ascontiguousarray(dirs), beams


@dataclass
class LidarScan:
    """Returns of one sweep (N points).

    points (N, 4) float32 x, y, z, intensity; noiseless (N, 3) float64 exact surface hit;
    range (N,) float64 measured (noisy) range; primitive (N,) int32 hit primitive (-2 = ground);
    owner (N,) int32 labelled object hit (-1 = none); beam (N,) int16.
    """

    points: np.ndarray
    noiseless: np.ndarray
    range: np.ndarray
    primitive: np.ndarray
    owner: np.ndarray
    beam: np.ndarray
    origin: np.ndarray


def scan(scene: Scene, config: LidarConfig, rng: np.random.Generator) -> LidarScan:
    """Simulate one sweep of `scene`; all randomness (noise, dropout, start azimuth) comes from `rng`."""
    origin = np.array([0.0, 0.0, config.sensor_height])
    azimuth_offset = rng.uniform(0.0, config.azimuth_resolution_deg)
    dirs, beams = config.ray_directions(azimuth_offset)
    hits = cast_rays(origin, dirs, scene.primitives, scene.ground, max_range=config.max_range)
    # draw the noise for every ray (not only the hits) so the stream does not depend on the scene
    range_noise = rng.normal(0.0, 1.0, dirs.shape[0]) * config.range_noise_std
    intensity_noise = rng.normal(0.0, 1.0, dirs.shape[0]) * config.intensity_noise_std
    keep_draw = rng.random(dirs.shape[0])
    measured = hits.distance + range_noise
    keep = ((hits.primitive != MISS) & (keep_draw >= config.dropout)
            & (measured >= config.min_range) & (measured <= config.max_range))
    idx = np.flatnonzero(keep)
    d = dirs[idx]
    cos_incidence = np.abs((hits.normal[idx] * d).sum(1))
    lambertian = hits.reflectivity[idx] * cos_incidence
    strong = lambertian >= config.return_threshold * (hits.distance[idx] / 10.0) ** 2
    idx, d, cos_incidence, lambertian = idx[strong], d[strong], cos_incidence[strong], lambertian[strong]
    noiseless = origin + d * hits.distance[idx, None]
    xyz = origin + d * measured[idx, None]
    intensity = np.clip(lambertian * (1.0 + intensity_noise[idx]), 0.0, 1.0)
    prim = hits.primitive[idx]
    owners = np.full(idx.size, -1, np.int32)
    on_object = prim >= 0
    owners[on_object] = scene.primitives.owners[prim[on_object]]
    points = np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
    return LidarScan(points, noiseless, measured[idx], prim, owners, beams[idx], origin)


def _rngs(seed: int):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFF, 29]))


def simulate(seed: int, scene_config: SceneConfig | None = None, lidar_config: LidarConfig | None = None,
             frame_id: str | None = None) -> tuple[Frame, Scene, LidarScan]:
    """`simulate_frame` plus the scene and the raw scan (hit ids, noiseless points) for inspection."""
    lidar_config = lidar_config or LidarConfig.preset("waymo64")
    if not isinstance(lidar_config, LidarConfig):
        raise TypeError(f"lidar_config must be a LidarConfig, got {type(lidar_config).__name__}")
    scene = generate_scene(seed, scene_config)
    sweep = scan(scene, lidar_config, _rngs(seed))
    boxes = scene_labels(scene, sweep.points)
    metadata = {"dataset": "synthetic", "seed": int(seed), "lidar": lidar_config.name,
                "sensor_height": lidar_config.sensor_height}
    frame = Frame(PointCloud(torch.from_numpy(sweep.points), POINT_FEATURES), boxes,
                  frame_id if frame_id is not None else f"synthetic_{int(seed)}", metadata)
    return frame, scene, sweep


def simulate_frame(seed: int, scene_config: SceneConfig | None = None, lidar_config: LidarConfig | None = None,
                   frame_id: str | None = None) -> Frame:
    """One labelled synthetic frame, bitwise identical for the same arguments.

    Points: `(N, 4)` float32 x, y, z, intensity in the synthetic frame; boxes: every object in the
    scene (also those with 0 points) with `num_points` and Waymo difficulty.
    """
    return simulate(seed, scene_config, lidar_config, frame_id)[0]


def scan_with_config(scene: Scene, lidar_config: LidarConfig, seed: int) -> LidarScan:
    """Scan a given (e.g. hand-made) scene with the noise stream of `seed`."""
    return scan(scene, lidar_config, _rngs(seed))


def without_noise(config: LidarConfig) -> LidarConfig:
    """Same sensor with no range / intensity noise and no dropout of any kind (exact surface hits)."""
    return replace(config, range_noise_std=0.0, intensity_noise_std=0.0, dropout=0.0, return_threshold=0.0)
