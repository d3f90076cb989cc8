"""Small synthetic point clouds for registration tests."""
from __future__ import annotations

import numpy as np


def room_cloud(seed: int = 0, n_per_face: int = 1500, n_box: int | None = None) -> np.ndarray:
    """`(4 * n_per_face + n_box, 3)` points of a 4 x 3 x 2.5 m room corner (floor and three walls) with a
    box standing on the floor: enough non-planar structure for a registration method to lock onto."""
    n_box = n_per_face if n_box is None else n_box
    rng = np.random.default_rng(seed)
    faces = []
    for axis, value in [(2, 0.0), (0, 0.0), (1, 0.0), (0, 4.0)]:
        pts = rng.uniform(0, [4, 3, 2.5], size=(n_per_face, 3))
        pts[:, axis] = value
        faces.append(pts)
    box = rng.uniform([1, 1, 0], [1.8, 1.6, 0.9], size=(n_box, 3))
    box[np.arange(n_box) % 3 == 0, 2] = 0.9
    box[np.arange(n_box) % 3 == 1, 0] = 1.0
    return np.concatenate(faces + [box])
