"""ScatterFormer scattered windows (He et al., "ScatterFormer: Efficient Voxel Transformer with
Scattered Linear Attention").

Voxels are sorted by window into variable-length contiguous segments described by offsets and
counts: no padding and no token budget, attention then runs segment-wise (see
`pc3d.models.attention.scattered_linear_attention`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from .rotated_sets import in_window_sort_key
from .windows import (as_triple, check_sparse_shape, coords_numpy, inverse_permutation, resolve_backend, sorted_segments,
                      window_partition, window_partition_numpy)


class ScatteredWindows(NamedTuple):
    """order: (V,) sorted position -> voxel row (windows contiguous, x-major inside a window);
    offsets: (W,) first sorted position of each window; counts: (W,) voxels per window;
    window_of_voxel: (V,) contiguous window index (0..W-1) of every voxel row;
    window_id: (W,) global window id (numbering of `window_partition`);
    inverse: (V,) sorted position of every voxel row (`order[inverse] == arange(V)`);
    coords_in_window: (V, 3) int64 (z, y, x)."""

    order: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    window_of_voxel: torch.Tensor
    window_id: torch.Tensor
    inverse: torch.Tensor
    coords_in_window: torch.Tensor


def scattered_windows(coords: torch.Tensor, sparse_shape: Sequence[int], window_shape: Sequence[int],
                      shift: Sequence[int] = (0, 0, 0), backend: str = "auto") -> ScatteredWindows:
    """Sort voxels by window: coords (V, 4) int (batch, z, y, x), window_shape (wx, wy, wz),
    shift (sx, sy, sz). Samples never share a window (the batch index is part of the window id).
    backend: "auto" (numba for CPU tensors outside export, else torch), "numba" or "torch"."""
    window_shape = as_triple(window_shape, "window_shape", 1)
    if resolve_backend(backend, coords) == "numba":
        return _scattered_windows_numba(coords, check_sparse_shape(sparse_shape), window_shape,
                                        as_triple(shift, "shift", 0))
    part = window_partition(coords, sparse_shape, window_shape, shift)
    volume = window_shape[0] * window_shape[1] * window_shape[2]
    inner = in_window_sort_key(part.coords_in_window, window_shape, "x")
    seg = sorted_segments(part.window_id, part.window_id * volume + inner)
    inverse = inverse_permutation(seg.order)
    window_of_voxel = seg.segment[inverse]
    window_id = part.window_id[seg.order[seg.starts]]
    return ScatteredWindows(seg.order, seg.starts, seg.counts, window_of_voxel, window_id, inverse,
                            part.coords_in_window)


def _scattered_windows_numba(coords, sparse_shape, window_shape, shift) -> ScatteredWindows:
    from . import _partition_numba as kernels
    window_id, in_window = window_partition_numpy(coords_numpy(coords), sparse_shape, window_shape, shift)
    order = kernels.radix_argsort(kernels.in_window_keys(window_id, in_window, *window_shape, True))
    segment, starts, counts = kernels.runs(window_id[order])
    inverse, window_of_voxel = kernels.scatter_of_order(order, segment)
    return ScatteredWindows(*(torch.from_numpy(a) for a in (order, starts, counts, window_of_voxel,
                                                              window_id[order[starts]], inverse, in_window)))
