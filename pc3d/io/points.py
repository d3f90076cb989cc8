"""One point-file reader for every tool: `.bin` (float32 rows), `.npy`, `.ply`, `.pcd`, legacy `.pth`.

Returns `float32 (N, C)` with x, y, z first. A file that does not decode into that gets a
`ValueError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pc3d.io.safe_pickle import safe_load

SUPPORTED_SUFFIXES = (".bin", ".npy", ".ply", ".pcd", ".pth", ".pkl")


def read_points(path, dim: int | None = None) -> np.ndarray:
    """Read a scan. `dim` is the number of float32 columns of a `.bin` file (default 4, KITTI).

    nuScenes `.pcd.bin` files have 5 columns and Waymo files converted by other toolkits often 6:
    pass `dim` for those. Other formats carry their own shape; `dim`, when given, is checked.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".bin":
        points = _read_bin(path, 4 if dim is None else dim)
    elif suffix == ".npy":
        try:
            points = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path}: not a readable .npy array ({err})") from err
    elif suffix in (".ply", ".pcd"):
        points = _read_open3d(path)
    elif suffix in (".pth", ".pkl"):
        points = safe_load(path)
        if isinstance(points, dict):
            points = next((points[k] for k in ("points", "pcd", "xyz", "coord") if k in points), points)
    else:
        raise ValueError(f"{path}: unsupported point file type {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"{path}: expected an (N, C>=3) point array, got shape {points.shape}")
    if not np.issubdtype(points.dtype, np.number):
        raise ValueError(f"{path}: point array has non-numeric dtype {points.dtype}")
    if dim is not None and suffix != ".bin" and points.shape[1] != dim:
        raise ValueError(f"{path}: has {points.shape[1]} columns but --dim {dim} was given")
    return np.ascontiguousarray(points, dtype=np.float32)


def _read_bin(path: Path, dim: int) -> np.ndarray:
    if dim < 3:
        raise ValueError(f"dim must be >= 3 (x, y, z first), got {dim}")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % dim:
        hint = [d for d in (4, 5, 6) if raw.size % d == 0 and d != dim]
        raise ValueError(
            f"{path}: {raw.size} float32 values is not a multiple of dim={dim}"
            + (f" (it would fit dim {hint})" if hint else " (corrupt or not a float32 point file)"))
    return raw.reshape(-1, dim)


def _read_open3d(path: Path) -> np.ndarray:
    import open3d as o3d  # heavy; only for .ply / .pcd

    cloud = o3d.io.read_point_cloud(str(path))
    xyz = np.asarray(cloud.points)
    if xyz.size == 0 and path.stat().st_size > 0:
        raise ValueError(f"{path}: Open3D read no points (corrupt or unsupported {path.suffix} file)")
    return xyz


def write_points(path, points: np.ndarray) -> None:
    """Write float32 points as `.npy` or `.bin` atomically (temp file + rename)."""
    import os

    path = Path(path)
    points = np.ascontiguousarray(points, dtype=np.float32)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, points)
    elif path.suffix == ".bin":
        points.tofile(tmp)
    else:
        raise ValueError(f"{path}: write_points writes .npy or .bin")
    os.replace(tmp, path)
