"""Outdoor ground: a gently sloped plane plus smooth rolling roughness (an analytic heightfield).

    z = g(x, y) = offset + slope_x x + slope_y y + sum_k A_k sin(kx_k x + ky_k y + phase_k)

An analytic heightfield (rather than a sampled grid) keeps the ground exactly defined everywhere,
so a test can check every ground return against `height` to sub-millimetre precision, and the ray
caster can bound the roughness (`sum |A_k|`) to sphere-trace it safely.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GroundModel:
    """waves: `(K, 4)` rows `(amplitude, kx, ky, phase)`; reflectivity: albedo of the surface."""

    offset: float = 0.0
    slope_x: float = 0.0
    slope_y: float = 0.0
    waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    reflectivity: float = 0.2

    def __post_init__(self):
        self.waves = np.asarray(self.waves, np.float64).reshape(-1, 4)

    @classmethod
    def flat(cls, height: float = 0.0, reflectivity: float = 0.2) -> "GroundModel":
        return cls(offset=height, reflectivity=reflectivity)

    @classmethod
    def random(cls, rng: np.random.Generator, max_slope_deg: float, roughness: float,
               reflectivity: float = 0.2) -> "GroundModel":
        """Random gentle slope (up to `max_slope_deg`) and roughness of total amplitude `roughness` metres.

        The offset is chosen so that the ground passes through the origin (the ego position), which
        makes the sensor sit exactly `sensor_height` above the ground below it.
        """
        slope = np.tan(np.deg2rad(rng.uniform(0.0, max_slope_deg)))
        direction = rng.uniform(-np.pi, np.pi)
        num_waves = 4
        amps = rng.dirichlet(np.ones(num_waves)) * roughness
        wavelengths = rng.uniform(4.0, 30.0, num_waves)
        angles = rng.uniform(-np.pi, np.pi, num_waves)
        k = 2.0 * np.pi / wavelengths
        waves = np.stack([amps, k * np.cos(angles), k * np.sin(angles), rng.uniform(-np.pi, np.pi, num_waves)], 1)
        model = cls(0.0, slope * np.cos(direction), slope * np.sin(direction), waves, reflectivity)
        model.offset = -float(model.height(np.zeros(1), np.zeros(1))[0])
        return model

    @property
    def roughness_bound(self) -> float:
        return float(np.abs(self.waves[:, 0]).sum())

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        z = self.offset + self.slope_x * x + self.slope_y * y
        for amp, kx, ky, phase in self.waves:
            z = z + amp * np.sin(kx * x + ky * y + phase)
        return z

    def gradient(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gx = np.full(np.shape(x), self.slope_x)
        gy = np.full(np.shape(x), self.slope_y)
        for amp, kx, ky, phase in self.waves:
            c = amp * np.cos(kx * x + ky * y + phase)
            gx = gx + kx * c
            gy = gy + ky * c
        return gx, gy

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        """(N,) distance to the ground: vertical gap scaled by the local slope (first order, exact on planes)."""
        gx, gy = self.gradient(points[:, 0], points[:, 1])
        gap = points[:, 2] - self.height(points[:, 0], points[:, 1])
        return np.abs(gap) / np.sqrt(1.0 + gx ** 2 + gy ** 2)

    def params(self) -> np.ndarray:
        """(4,) `(offset, slope_x, slope_y, reflectivity)` for the ray caster."""
        return np.array([self.offset, self.slope_x, self.slope_y, self.reflectivity], np.float64)
