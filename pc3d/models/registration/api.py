"""Common interface of every pc3d registration method.

`Registration.register(src (N, 3), ref (M, 3)) -> RegistrationResult` where `transform` maps `src` into
`ref`'s frame: `ref ~ src @ R.T + t` with `transform = [[R, t], [0, 1]]`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np
import torch

from pc3d.ops.point_ops import as_points


@dataclass
class RegistrationResult:
    """Output of one registration.

    transform: `(4, 4)` float64, maps src into ref.
    inliers: number of correspondences within the method's inlier threshold under `transform`.
    seconds: wall time of `register`.
    correspondences: `(K, 2)` int64 pairs `(src_index, ref_index)` into the *input* clouds (may be empty).
    extra: method-specific diagnostics (e.g. ICP fitness, number of hypotheses).
    """

    transform: np.ndarray
    inliers: int
    seconds: float
    correspondences: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"transform": np.asarray(self.transform).tolist(), "inliers": int(self.inliers),
                "seconds": float(self.seconds), "num_correspondences": int(len(self.correspondences)),
                **{k: v for k, v in self.extra.items() if isinstance(v, (int, float, str, bool))}}


def validate_cloud(points, name: str) -> np.ndarray:
    """(N, 3+) numpy/torch -> (N, 3) float64 numpy, raising a ValueError/TypeError naming `name`."""
    pts = as_points(points, name=name, dtype=torch.float64)
    return pts[:, :3].detach().cpu().numpy().astype(np.float64)


def apply_transform(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """`(N, 3)` points mapped by a `(4, 4)` rigid transform."""
    transform = np.asarray(transform)
    return points @ transform[:3, :3].T + transform[:3, 3]


class Registration(abc.ABC):
    """A pairwise rigid registration method."""

    name: str = "registration"

    @abc.abstractmethod
    def register(self, src, ref) -> RegistrationResult:
        """Estimate the transform mapping `src (N, 3)` into `ref (M, 3)`'s frame."""
