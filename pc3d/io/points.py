"""One point-file reader for every tool: `.bin` (float32 rows), `.npy`, `.ply`, `.pcd`, legacy `.pth`.

Returns `float32 (N, C)` with x, y, z first. A file that does not decode into that gets a
`ValueError` naming the file: a truncated PLY / PCD (fewer rows or bytes than its header declares), a
`.bin` whose size is not a whole number of float32 x dim, a `.bin` whose columns are implausible for the
given dim (see `check_bin_layout`), a complex / boolean / object array, a directory given as a file.
`.ply` / `.pcd` keep an intensity column when the file has one (`pc3d.io.ply_pcd`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pc3d.io.safe_pickle import safe_load

SUPPORTED_SUFFIXES = (".bin", ".npy", ".ply", ".pcd", ".pth", ".pkl")
BIN_DIMS = (4, 5, 6)  # KITTI / SemanticKITTI; nuScenes, Lyft; Waymo as converted by mmdet3d / OpenPCDet
# coordinates beyond this (metres) are not a scan: e.g. a Waymo timestamp column (~1.5e15) read as z
_MAX_COORD = 1e7


def read_points(path, dim: int | None = None) -> np.ndarray:
    """Read a scan. `dim` is the number of float32 columns of a `.bin` file (default 4, KITTI).

    nuScenes `.pcd.bin` files have 5 columns and Waymo files converted by other toolkits often 6:
    pass `dim` for those. Other formats carry their own shape; `dim`, when given, is checked (a `.ply` /
    `.pcd` with intensity read with `dim=3` gives x, y, z only).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a point file (give one scan file: "
                                f"{', '.join(SUPPORTED_SUFFIXES)})")
    if not path.is_file():
        raise FileNotFoundError(f"point file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".bin":
            points = _read_bin(path, 4 if dim is None else dim, explicit=dim is not None)
        elif suffix == ".npy":
            try:
                points = np.load(path, allow_pickle=False)
            except ValueError as err:
                raise ValueError(f"{path}: not a readable .npy array ({err})") from err
        elif suffix in (".ply", ".pcd"):
            from pc3d.io.ply_pcd import read_pcd, read_ply
            points = read_ply(path) if suffix == ".ply" else read_pcd(path)
            if dim == 3:
                points = points[:, :3]
        elif suffix in (".pth", ".pkl"):
            points = safe_load(path)
            if isinstance(points, dict):
                points = next((points[k] for k in ("points", "pcd", "xyz", "coord") if k in points), points)
        else:
            raise ValueError(f"{path}: unsupported point file type {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    except OSError as err:  # permission denied, I/O error: name the file
        raise OSError(f"{path}: cannot read ({err.strerror or err})") from err
    points = np.asarray(points)
    if points.dtype.kind not in "fiu":
        what = {"c": "complex", "b": "boolean", "O": "object"}.get(points.dtype.kind, "non-numeric")
        raise ValueError(f"{path}: point array has {what} dtype {points.dtype}; expected real numbers")
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"{path}: expected an (N, C>=3) point array, got shape {points.shape}")
    if dim is not None and suffix != ".bin" and points.shape[1] != dim:
        raise ValueError(f"{path}: has {points.shape[1]} columns but --dim {dim} was given")
    return np.ascontiguousarray(points, dtype=np.float32)


def _read_bin(path: Path, dim: int, explicit: bool) -> np.ndarray:
    if dim < 3:
        raise ValueError(f"dim must be >= 3 (x, y, z first), got {dim}")
    size = path.stat().st_size
    if size % 4:
        raise ValueError(f"{path}: size {size} bytes is not a whole number of float32 values (4 bytes each), so not "
                         f"a multiple of dim={dim} float32 columns: truncated, or not a float32 point file")
    count = size // 4
    fits = [d for d in BIN_DIMS if count % d == 0 and d != dim]
    if count % dim:
        raise ValueError(
            f"{path}: size {size} bytes = {count} float32 values is not a multiple of dim={dim}"
            + (f" (it would fit dim {fits})" if fits else " (corrupt, truncated, or not a float32 point file)"))
    raw = np.fromfile(path, dtype=np.float32)
    points = raw.reshape(-1, dim)
    check_bin_layout(path, raw, dim, "--dim" if explicit else "the default dim")
    return points


def _plausible(raw: np.ndarray, dim: int) -> bool:
    """Does `raw` read as `dim` columns look like a scan? x, y, z within +-1e7 m, every further column
    (intensity, ring, elongation, time) finite and >= 0, as in KITTI, nuScenes, Lyft and Waymo files.
    A wrong dim interleaves coordinates into those columns, so some go negative (or huge)."""
    table = raw.reshape(-1, dim)
    xyz = table[:, :3]
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    if xyz.size and np.abs(xyz).max() > _MAX_COORD:
        return False
    features = table[:, 3:]
    return bool(features.size == 0 or (np.isfinite(features).all() and features.min() >= 0))


def check_bin_layout(path, raw: np.ndarray, dim: int, how: str = "--dim") -> None:
    """Refuse a `.bin` read with the wrong number of columns when the file shows it.

    The file must be implausible as `dim` columns (`_plausible`) while another common dim (4, 5, 6) that
    divides its size is plausible: then `dim` is wrong and the error names the right one. A file that
    no dim explains is left alone (its features may legitimately be negative).
    """
    if raw.size == 0 or _plausible(raw, dim):
        return
    better = [d for d in BIN_DIMS if d != dim and raw.size % d == 0 and _plausible(raw, d)]
    if better:
        raise ValueError(
            f"{path}: read as {dim} float32 columns ({how}) its extra columns hold negative or non-finite values "
            f"(x / y / z leaking into intensity / ring / time), so it is not a {dim}-column file; it reads "
            f"plausibly with dim {better[0]} (e.g. KITTI 4, nuScenes / Lyft 5, converted Waymo 6): pass --dim {better[0]}")


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
