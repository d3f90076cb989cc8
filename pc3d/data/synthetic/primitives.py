"""Solid primitives that synthetic scenes are built from, stored as flat arrays for the ray caster.

Three kinds, each defined in its own local frame and placed with a rotation + centre
(`p_world = R @ p_local + centre`):
- box: half extents `(hx, hy, hz)` along the local axes;
- cylinder: local z axis, `size = (radius, radius, half_length)` (capped);
- ellipsoid: semi-axes `(a, b, c)` along the local axes.

`Primitives` also carries, per primitive, a reflectivity in [0, 1] (material albedo used for the
intensity) and the index of the labelled object it belongs to (-1 for clutter / room structure).
`surface_distance` gives the unsigned distance from points to a primitive's surface, used by tests
and by `Scene.distance_to_surface` to check that every simulated return lies on a surface.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOX = 0
CYLINDER = 1
ELLIPSOID = 2
KIND_NAMES = {BOX: "box", CYLINDER: "cylinder", ELLIPSOID: "ellipsoid"}


def rotation_z(angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` radians about +z (counter-clockwise seen from above)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass
class Primitives:
    """P primitives as arrays.

    kinds (P,) int32; centers (P, 3) float64; rotations (P, 3, 3) float64 (local -> world);
    sizes (P, 3) float64 (meaning per kind, see module doc); reflectivity (P,) float64;
    owners (P,) int32 (labelled object index or -1).
    """

    kinds: np.ndarray
    centers: np.ndarray
    rotations: np.ndarray
    sizes: np.ndarray
    reflectivity: np.ndarray
    owners: np.ndarray

    def __len__(self) -> int:
        return int(self.kinds.shape[0])

    @classmethod
    def empty(cls) -> "Primitives":
        return cls(np.zeros(0, np.int32), np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)),
                   np.zeros(0), np.zeros(0, np.int32))

    @classmethod
    def from_list(cls, items: list[tuple]) -> "Primitives":
        """Build from `(kind, center (3,), rotation (3, 3), size (3,), reflectivity, owner)` tuples."""
        if not items:
            return cls.empty()
        kinds, centers, rots, sizes, refl, owners = zip(*items)
        out = cls(np.asarray(kinds, np.int32), np.asarray(centers, np.float64).reshape(-1, 3),
                  np.asarray(rots, np.float64).reshape(-1, 3, 3), np.asarray(sizes, np.float64).reshape(-1, 3),
                  np.asarray(refl, np.float64), np.asarray(owners, np.int32))
        out.validate()
        return out

    @classmethod
    def concat(cls, parts: list["Primitives"]) -> "Primitives":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                     ("kinds", "centers", "rotations", "sizes", "reflectivity", "owners")))

    def validate(self) -> None:
        if not np.isin(self.kinds, (BOX, CYLINDER, ELLIPSOID)).all():
            raise ValueError(f"Primitives.kinds: unknown kind in {np.unique(self.kinds).tolist()}")
        if not (np.isfinite(self.centers).all() and np.isfinite(self.sizes).all()):
            raise ValueError("Primitives: centers and sizes must be finite")
        if (self.sizes <= 0).any():
            raise ValueError("Primitives.sizes must be positive")

    def bounding_radius(self) -> np.ndarray:
        """(P,) radius of a sphere around each centre that encloses the primitive."""
        r = np.empty(len(self))
        box = self.kinds == BOX
        r[box] = np.linalg.norm(self.sizes[box], axis=1)
        cyl = self.kinds == CYLINDER
        r[cyl] = np.hypot(self.sizes[cyl, 0], self.sizes[cyl, 2])
        ell = self.kinds == ELLIPSOID
        r[ell] = self.sizes[ell].max(axis=1)
        return r

    def extents_in_frame(self, index: int, rotation: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tight (min, max) corners of primitive `index` expressed in the frame `(rotation, origin)`.

        For a box the 8 corners are exact; a cylinder / ellipsoid is bounded by the support function
        along each target axis, which is exact for these shapes.
        """
        # M maps the primitive's local coordinates into the target frame's axes.
        m = rotation.T @ self.rotations[index]
        c = rotation.T @ (self.centers[index] - origin)
        kind = self.kinds[index]
        size = self.sizes[index]
        if kind == BOX:
            half = np.abs(m) @ size
        elif kind == ELLIPSOID:
            half = np.sqrt((m ** 2) @ (size ** 2))
        else:
            radius, half_len = size[0], size[2]
            # support of a capped cylinder along axis u: |u . a| h + r sqrt(1 - (u . a)^2)
            axis_comp = np.abs(m[:, 2])
            half = axis_comp * half_len + radius * np.sqrt(np.clip(1.0 - axis_comp ** 2, 0.0, 1.0))
        return c - half, c + half

    def surface_distance(self, points: np.ndarray, index: int) -> np.ndarray:
        """(N,) unsigned distance from `points (N, 3)` to the surface of primitive `index`.

        Exact for boxes and cylinders; for ellipsoids the first-order estimate
        `k0 (k0 - 1) / k1` (exact on the surface, accurate to second order near it).
        """
        local = (points - self.centers[index]) @ self.rotations[index]
        size = self.sizes[index]
        kind = self.kinds[index]
        if kind == BOX:
            q = np.abs(local) - size
            outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
            inside = np.minimum(q.max(axis=1), 0.0)
            return np.abs(outside + inside)
        if kind == CYLINDER:
            d_r = np.hypot(local[:, 0], local[:, 1]) - size[0]
            d_z = np.abs(local[:, 2]) - size[2]
            outside = np.hypot(np.maximum(d_r, 0.0), np.maximum(d_z, 0.0))
            inside = np.minimum(np.maximum(d_r, d_z), 0.0)
            return np.abs(outside + inside)
        k0 = np.linalg.norm(local / size, axis=1)
        k1 = np.linalg.norm(local / size ** 2, axis=1)
        return np.abs(k0 * (k0 - 1.0) / np.maximum(k1, 1e-12))

    def contains(self, points: np.ndarray, index: int, margin: float = 0.0) -> np.ndarray:
        """(N,) bool: point inside primitive `index` grown by `margin` (approximately for ellipsoids)."""
        local = (points - self.centers[index]) @ self.rotations[index]
        size = self.sizes[index] + margin
        kind = self.kinds[index]
        if kind == BOX:
            return (np.abs(local) <= size).all(axis=1)
        if kind == CYLINDER:
            return (np.hypot(local[:, 0], local[:, 1]) <= size[0]) & (np.abs(local[:, 2]) <= size[2])
        return np.linalg.norm(local / size, axis=1) <= 1.0
