"""Shared window-coordinate helpers for the window partition ops.

Conventions (see docs/conventions.md): voxel `coords` are `(V, 4)` integer `(batch, z, y, x)` and
`sparse_shape` is pc3d's `spatial_shape` `(nz, ny, nx)`. Window shapes and shifts follow the DSVT /
FlatFormer configs and are given as **`(wx, wy, wz)`** / **`(sx, sy, sz)`** (x first).

A window shift moves the voxel grid by `+shift` before cutting it into windows (DSVT's rule), so a
window index is `(coord + shift) // window` and the in-window coordinate `(coord + shift) % window`.
Every grid gets one spare window per axis (`ceil(n / w) + 1`) so that shifted grids fit.

Everything here is plain tensor arithmetic (sort, cumsum, gather) so the graph exports to ONNX;
the checks on values are skipped while tracing/exporting. On CPU tensors outside export the partition
ops run fused numba kernels instead (`_partition_numba.py`, `backend="auto"`), with identical output.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch


def is_exporting() -> bool:
    """True under torch.export / torch.compile / ONNX export (value checks must be skipped)."""
    try:
        if torch.compiler.is_compiling():
            return True
    except AttributeError:  # pragma: no cover - older torch
        pass
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def as_triple(value, name: str, minimum: int) -> tuple[int, int, int]:
    """Normalise a window shape / shift to three python ints `(x, y, z)`; 2 values get z = 1 / 0."""
    if isinstance(value, int):
        raise TypeError(f"{name}: expected a sequence of 2 or 3 ints (x, y[, z]), got the int {value}")
    values = [int(v) for v in value]
    if len(values) == 2:
        values.append(1 if minimum >= 1 else 0)
    if len(values) != 3:
        raise ValueError(f"{name}: expected 2 or 3 values (x, y[, z]), got {list(value)}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name}: every entry must be >= {minimum}, got {values}")
    return tuple(values)


def check_sparse_shape(sparse_shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(int(v) for v in sparse_shape)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"sparse_shape: expected (nz, ny, nx) positive ints, got {tuple(sparse_shape)}")
    return values


def check_coords(coords: torch.Tensor, sparse_shape: Sequence[int] | None = None,
                 name: str = "coords", check_values: bool = True) -> torch.Tensor:
    """Validate `(V, 4)` integer `(batch, z, y, x)` coords and return them as int64 (`check_values=False`:
    type, dtype and shape only; the numba kernels check the values in their own pass)."""
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(coords).__name__}")
    if coords.dtype.is_floating_point or coords.dtype == torch.bool or coords.is_complex():
        raise TypeError(f"{name}: expected an integer tensor (batch, z, y, x), got {coords.dtype}")
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (V, 4) (batch, z, y, x), got {tuple(coords.shape)}")
    coords = coords.long()
    if check_values and not is_exporting() and coords.shape[0] > 0:
        if bool((coords < 0).any()):
            raise ValueError(f"{name}: negative batch index or voxel coordinate")
        if sparse_shape is not None:
            upper = torch.tensor([int(2**62)] + list(sparse_shape), device=coords.device)
            if bool((coords >= upper).any()):
                raise ValueError(f"{name}: a voxel coordinate lies outside sparse_shape {tuple(sparse_shape)} (nz, ny, nx)")
    return coords


BACKENDS = ("auto", "numba", "torch")


def resolve_backend(backend: str, coords) -> str:
    """"numba" for CPU tensors outside tracing/export ("auto"), else "torch"; an explicit choice is checked."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    on_cpu = not isinstance(coords, torch.Tensor) or coords.device.type == "cpu"
    if backend == "auto":
        return "numba" if on_cpu and not is_exporting() else "torch"
    if backend == "numba" and not on_cpu:
        raise ValueError(f"backend: 'numba' runs on the CPU only, coords are on {coords.device}")
    if backend == "numba" and is_exporting():
        raise ValueError("backend: 'numba' cannot be traced or exported; use 'torch'")
    return backend


def coords_numpy(coords: torch.Tensor, name: str = "coords"):
    """Type/shape-checked coords as a contiguous int64 numpy array for the numba kernels."""
    return np.ascontiguousarray(check_coords(coords, None, name, check_values=False).numpy())


def raise_on_status(status: int, sparse_shape, name: str = "coords") -> None:
    """Turn a numba kernel's coordinate status into the torch path's error."""
    from ._partition_numba import STATUS_NEGATIVE, STATUS_OUTSIDE
    if status == STATUS_NEGATIVE:
        raise ValueError(f"{name}: negative batch index or voxel coordinate")
    if status == STATUS_OUTSIDE:
        raise ValueError(f"{name}: a voxel coordinate lies outside sparse_shape {tuple(sparse_shape)} (nz, ny, nx)")


def window_partition_numpy(coords_np, sparse_shape, window_shape, shift):
    """(window_id (V,), coords_in_window (V, 3)) numpy arrays, as `window_partition` (numba kernel)."""
    from ._partition_numba import window_coords
    nz, ny, nx = sparse_shape
    nwx, nwy, nwz = num_windows(sparse_shape, window_shape)
    status, window_id, in_window = window_coords(coords_np, nz, ny, nx, *window_shape, *shift, nwx, nwy, nwz)
    raise_on_status(status, sparse_shape)
    return window_id, in_window


def num_windows(sparse_shape: Sequence[int], window_shape: Sequence[int]) -> tuple[int, int, int]:
    """Windows per axis `(nwx, nwy, nwz)` including DSVT's spare window for shifted grids."""
    nz, ny, nx = sparse_shape
    wx, wy, wz = window_shape
    return (math.ceil(nx / wx) + 1, math.ceil(ny / wy) + 1, math.ceil(nz / wz) + 1)


class WindowPartition(NamedTuple):
    """window_id: (V,) int64, unique per (batch, window) and ordered by (batch, wz, wy, wx);
    window_coords: (V, 4) int64 (batch, wz, wy, wx); coords_in_window: (V, 3) int64 (z, y, x)."""

    window_id: torch.Tensor
    window_coords: torch.Tensor
    coords_in_window: torch.Tensor


def window_partition(coords: torch.Tensor, sparse_shape: Sequence[int], window_shape: Sequence[int],
                     shift: Sequence[int] = (0, 0, 0)) -> WindowPartition:
    """Assign every voxel to a window of `window_shape` (x, y, z) after shifting the grid by `shift`.

    coords: (V, 4) int (batch, z, y, x). Returns a `WindowPartition` (see its docstring).
    """
    sparse_shape = check_sparse_shape(sparse_shape)
    window_shape = as_triple(window_shape, "window_shape", 1)
    shift = as_triple(shift, "shift", 0)
    coords = check_coords(coords, sparse_shape)
    nwx, nwy, nwz = num_windows(sparse_shape, window_shape)
    wx, wy, wz = window_shape
    sx, sy, sz = shift
    z = coords[:, 1] + sz
    y = coords[:, 2] + sy
    x = coords[:, 3] + sx
    win_z, win_y, win_x = z // wz, y // wy, x // wx
    batch = coords[:, 0]
    window_id = ((batch * nwz + win_z) * nwy + win_y) * nwx + win_x
    window_coords = torch.stack([batch, win_z, win_y, win_x], dim=1)
    # c - w * (c // w) instead of c % w: same value for c >= 0, and int64 remainder is slow on the CPU
    coords_in_window = torch.stack([z - win_z * wz, y - win_y * wy, x - win_x * wx], dim=1)
    return WindowPartition(window_id, window_coords, coords_in_window)


class SortedSegments(NamedTuple):
    """Voxels sorted by a group key and cut into runs of equal group id.

    order: (V,) sorted position -> voxel row; rank: (V,) rank of each sorted position inside its
    run; segment: (V,) contiguous run index of each sorted position; starts: (W,) first sorted
    position of each run; counts: (W,) run lengths.
    """

    order: torch.Tensor
    rank: torch.Tensor
    segment: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor


def sorted_segments(group_id: torch.Tensor, sort_key: torch.Tensor | None = None) -> SortedSegments:
    """Sort voxels by `sort_key` (default `group_id`) and find the runs of equal `group_id`.

    `sort_key` must order by `group_id` first (e.g. `group_id * M + in_group_key`) and be unique
    (ONNX has no stable sort, so ties must not exist); without it the rows keep their order of
    appearance inside a group. The in-run rank comes from `position - start_of_run` (a cumsum
    trick), replacing DSVT's custom CUDA counter op.
    """
    if sort_key is None:
        sort_key = group_id * group_id.shape[0] + torch.arange(group_id.shape[0], device=group_id.device)
    order = torch.argsort(sort_key)
    return segments_of_sorted(group_id[order], order)


def segments_of_sorted(sorted_group: torch.Tensor, order: torch.Tensor | None = None) -> SortedSegments:
    """Runs of equal ids in an already sorted (V,) `sorted_group` (`order` defaults to identity)."""
    n = sorted_group.shape[0]
    if order is None:
        order = torch.arange(n, device=sorted_group.device)
    # written without python branches on the length so torch.export sees one graph for any V
    previous = torch.cat([sorted_group[:1] - 1, sorted_group[:-1]])
    is_start = sorted_group != previous
    segment = torch.cumsum(is_start.long(), dim=0) - 1
    starts = torch.nonzero(is_start).reshape(-1)
    counts = torch.diff(torch.cat([starts, starts.new_full((1,), n)]))
    position = torch.arange(n, device=sorted_group.device)
    rank = position - starts[segment]
    return SortedSegments(order, rank, segment, starts, counts)


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """`inv[order[i]] = i` for a permutation `order` (V,)."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.shape[0], device=order.device, dtype=order.dtype)
    return inv


def expand_segments(starts: torch.Tensor, total: int) -> torch.Tensor:
    """Segment index of every position `0..total-1` for non-empty segments starting at `starts` (W,).

    Equivalent to `searchsorted(ends, arange(total), right=True)` or `repeat_interleave`, written as
    scatter + cumsum because ONNX has neither searchsorted nor a dynamic repeat_interleave.
    """
    markers = torch.zeros(total, dtype=torch.long, device=starts.device)
    markers = markers.scatter(0, starts, torch.ones_like(starts))
    return torch.cumsum(markers, dim=0) - 1
