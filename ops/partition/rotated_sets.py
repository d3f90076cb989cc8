"""DSVT rotated-set partition (Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets").

Voxels are grouped into windows; inside a window they are ordered x-major (`axis="x"`) or y-major
(`axis="y"`), and a window holding `N` voxels gets `n = ceil(N / S)` sets of `S` slots. Slot `k` of
set `j` takes the voxel of in-window rank

    floor((j * S + k) * N / (n * S))                                    (DSVT, Eq. 3)

so every voxel lands in exactly one set (padding repeats neighbours, nothing is dropped) and the
repeats of a set are adjacent; `key_padding_mask` marks them (True = ignore as attention key).

Pure PyTorch: the in-window rank is `position - start_of_window` after one sort (no CUDA counter op).
On CPU tensors (outside export) the same layout comes from fused numba kernels (`backend="auto"`),
identical output; `backend="torch"` forces the exportable path.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from .windows import (as_triple, check_sparse_shape, coords_numpy, expand_segments, resolve_backend, sorted_segments,
                      window_partition, window_partition_numpy)

AXES = ("x", "y")


class RotatedSets(NamedTuple):
    """voxel_index: (num_sets, S) int64 voxel rows; key_padding_mask: (num_sets, S) bool, True on a
    slot repeating the previous slot's voxel; set_window: (num_sets,) int64 window id of each set
    (same numbering as `window_partition`); slot_of_voxel: (V,) int64 flat position
    (`set * S + slot`) of the first slot holding each voxel, to map set outputs back to voxels;
    coords_in_window: (V, 3) int64 (z, y, x) in-window coordinates (for position embeddings)."""

    voxel_index: torch.Tensor
    key_padding_mask: torch.Tensor
    set_window: torch.Tensor
    slot_of_voxel: torch.Tensor
    coords_in_window: torch.Tensor


def in_window_sort_key(coords_in_window: torch.Tensor, window_shape: Sequence[int], axis: str) -> torch.Tensor:
    """Linear in-window index, x-major (`axis="x"`: x, then y, then z) or y-major (`axis="y"`).

    coords_in_window: (V, 3) (z, y, x); window_shape (wx, wy, wz). Returns (V,) int64 in [0, wx*wy*wz).
    """
    wx, wy, wz = window_shape
    z, y, x = coords_in_window.unbind(1)
    if axis == "x":
        return (x * wy + y) * wz + z
    if axis == "y":
        return (y * wx + x) * wz + z
    raise ValueError(f"axis: expected one of {AXES}, got {axis!r}")


def rotated_sets(coords: torch.Tensor, sparse_shape: Sequence[int], window_shape: Sequence[int],
                 set_size: int, axis: str = "x", shift: Sequence[int] = (0, 0, 0),
                 backend: str = "auto") -> RotatedSets:
    """Partition voxels into DSVT's window-bounded, equal-size sets.

    Args:
        coords: (V, 4) int (batch, z, y, x); samples never share a window.
        sparse_shape: (nz, ny, nx) grid size.
        window_shape: (wx, wy, wz), e.g. (12, 12, 1) for pillars.
        set_size: S, voxels per set (e.g. 36 for pillars, 48 for 3D voxels).
        axis: "x" (x-major order within the window) or "y" (y-major).
        shift: (sx, sy, sz) grid shift applied before windowing (DSVT uses half a window).
        backend: "auto" (numba for CPU tensors outside export, else torch), "numba" or "torch".
    Sets are ordered by window id, then by set index within the window.
    """
    if axis not in AXES:
        raise ValueError(f"axis: expected one of {AXES}, got {axis!r}")
    return _rotated_sets(coords, sparse_shape, window_shape, set_size, (axis,), shift, backend)[0]


def rotated_set_pair(coords: torch.Tensor, sparse_shape: Sequence[int], window_shape: Sequence[int],
                     set_size: int, shift: Sequence[int] = (0, 0, 0),
                     backend: str = "auto") -> tuple[RotatedSets, RotatedSets]:
    """`(y_sets, x_sets)` of one window configuration, sharing the window partition and set layout
    (as a DSVT block uses them: a y-set layer, then an x-set layer). Same arguments as `rotated_sets`."""
    return _rotated_sets(coords, sparse_shape, window_shape, set_size, ("y", "x"), shift, backend)


def _rotated_sets(coords, sparse_shape, window_shape, set_size, axes, shift, backend) -> list[RotatedSets]:
    if not isinstance(set_size, int) or isinstance(set_size, bool) or set_size < 1:
        raise ValueError(f"set_size: expected a positive int, got {set_size!r}")
    sparse_shape = check_sparse_shape(sparse_shape)
    window_shape = as_triple(window_shape, "window_shape", 1)
    if resolve_backend(backend, coords) == "numba":
        return _rotated_sets_numba(coords, sparse_shape, window_shape, set_size, axes, as_triple(shift, "shift", 0))
    part = window_partition(coords, sparse_shape, window_shape, shift)
    volume = window_shape[0] * window_shape[1] * window_shape[2]
    device = part.window_id.device
    # Both axes sort by window first, so windows, counts and starts (hence the set layout) are shared;
    # only the in-window order differs.
    orders = []
    seg = None
    for axis in axes:
        key = part.window_id * volume + in_window_sort_key(part.coords_in_window, window_shape, axis)
        if seg is None:
            seg = sorted_segments(part.window_id, key)
            orders.append(seg.order)
        else:
            orders.append(torch.argsort(key))

    counts = seg.counts                                          # (W,) voxels per window
    sets_per_window = torch.div(counts + set_size - 1, set_size, rounding_mode="floor")
    set_start = torch.cumsum(sets_per_window, dim=0) - sets_per_window
    num_sets = int(sets_per_window.sum().item())
    window_of_set = expand_segments(set_start, num_sets)         # contiguous window index
    set_in_window = torch.arange(num_sets, device=device) - set_start[window_of_set]
    slot = torch.arange(set_size, device=device)
    n_vox = counts[window_of_set][:, None]
    n_sets = sets_per_window[window_of_set][:, None]
    # exact integer form of DSVT's floor((j*S + k) * N / (n*S)); int64 avoids DSVT's double round trip
    rank = torch.div((set_in_window[:, None] * set_size + slot[None, :]) * n_vox, n_sets * set_size,
                     rounding_mode="floor")
    sorted_pos = seg.starts[window_of_set][:, None] + rank
    # repeats are adjacent and depend only on the ranks, so the mask is shared by both axes
    repeat = torch.zeros_like(rank, dtype=torch.bool)
    if set_size > 1:
        repeat = torch.cat([repeat[:, :1], rank[:, 1:] == rank[:, :-1]], dim=1)
    # First slot of each voxel: masked slots get a sentinel so the minimum picks the unmasked one.
    flat_slot = torch.arange(num_sets * set_size, device=device)
    candidate = torch.where(repeat.reshape(-1), torch.full_like(flat_slot, num_sets * set_size), flat_slot)
    set_window = part.window_id[seg.order[seg.starts]][window_of_set]

    out = []
    for order in orders:
        voxel_index = order[sorted_pos]
        slot_of_voxel = torch.full_like(part.window_id, num_sets * set_size).scatter_reduce(
            0, voxel_index.reshape(-1), candidate, reduce="amin", include_self=True)
        out.append(RotatedSets(voxel_index, repeat, set_window, slot_of_voxel, part.coords_in_window))
    return out


def _rotated_sets_numba(coords, sparse_shape, window_shape, set_size, axes, shift) -> list[RotatedSets]:
    from . import _partition_numba as kernels
    window_id, in_window = window_partition_numpy(coords_numpy(coords), sparse_shape, window_shape, shift)
    orders = [kernels.radix_argsort(kernels.in_window_keys(window_id, in_window, *window_shape, axis == "x"))
              for axis in axes]
    _, starts, counts = kernels.runs(window_id[orders[0]])
    rank, window_of_set, repeat = kernels.set_layout(starts, counts, set_size)
    set_window = torch.from_numpy(window_id[orders[0][starts]][window_of_set])
    repeat, in_window = torch.from_numpy(repeat), torch.from_numpy(in_window)
    out = []
    for order in orders:
        voxel_index, slot_of_voxel = kernels.sets_of_order(order, starts, rank, window_of_set, repeat.numpy())
        out.append(RotatedSets(torch.from_numpy(voxel_index), repeat, set_window, torch.from_numpy(slot_of_voxel),
                               in_window))
    return out


def rotated_sets_reference(coords: torch.Tensor, sparse_shape: Sequence[int], window_shape: Sequence[int],
                           set_size: int, axis: str = "x", shift: Sequence[int] = (0, 0, 0)) -> list[list[int]]:
    """Brute-force plain-Python reference: the voxel rows of every set, window by window.

    Used by the tests and the benchmark; O(V) python work, slow on purpose.
    """
    wx, wy, wz = as_triple(window_shape, "window_shape", 1)
    sx, sy, sz = as_triple(shift, "shift", 0)
    nz, ny, nx = check_sparse_shape(sparse_shape)
    nwx, nwy, nwz = -(-nx // wx) + 1, -(-ny // wy) + 1, -(-nz // wz) + 1
    windows: dict[int, list[tuple[int, int]]] = {}
    for row, (b, z, y, x) in enumerate(coords.tolist()):
        z, y, x = z + sz, y + sy, x + sx
        wid = ((b * nwz + z // wz) * nwy + y // wy) * nwx + x // wx
        iz, iy, ix = z % wz, y % wy, x % wx
        key = (ix * wy + iy) * wz + iz if axis == "x" else (iy * wx + ix) * wz + iz
        windows.setdefault(wid, []).append((key, row))
    sets = []
    for wid in sorted(windows):
        members = [row for _, row in sorted(windows[wid])]
        n = len(members)
        n_sets = -(-n // set_size)
        for j in range(n_sets):
            sets.append([members[((j * set_size + k) * n) // (n_sets * set_size)] for k in range(set_size)])
    return sets
