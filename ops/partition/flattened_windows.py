"""FlatFormer flattened-window partition (Liu et al., "FlatFormer: Flattened Window Attention for
Efficient Point Cloud Transformer").

Voxels are sorted along a serpentine (boustrophedon) curve: windows are visited row by row with the
direction flipping on every other row, and inside a window the voxels are visited column by column,
again flipping direction, with the whole in-window order reversed when the window row runs
backwards, so consecutive voxels stay close. The sequence of each sample is then cut into groups of
`group_size` voxels (equal size, not equal window); the tail of a sample is padded by repeating the
voxels one group earlier (FlatFormer's rule), or cyclically when the sample has fewer voxels than a
group (FlatFormer would read the previous sample there).

Four orderings are used by a FlatFormer block: along x, along x with a half-window shift, along y
and along y shifted (`ORDERS`). On CPU tensors (outside export) fused numba kernels compute the same
groups (`backend="auto"`); `backend="torch"` forces the exportable path.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from .windows import (as_triple, check_coords, check_sparse_shape, coords_numpy, expand_segments, num_windows,
                      raise_on_status, resolve_backend, segments_of_sorted)

ORDERS = ("x", "x_shift", "y", "y_shift")


def _parity_flip(value: torch.Tensor, parity_source: torch.Tensor, size: int) -> torch.Tensor:
    """`value` when `parity_source` is even, `size - 1 - value` when odd (serpentine step)."""
    return torch.where((parity_source & 1) == 0, value, size - 1 - value)


def flattened_window_key(coords: torch.Tensor, sparse_shape: Sequence[int], window_shape: Sequence[int],
                         axis: str = "x", shifted: bool = False) -> torch.Tensor:
    """Serpentine sort key of every voxel; sorting by it gives the flattened order (batch-major).

    coords: (V, 4) int (batch, z, y, x); sparse_shape (nz, ny, nx); window_shape (wx, wy[, wz])
    (z is ignored: a window is a full column and z only breaks ties). Returns (V,) int64, unique for
    unique coords.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis: expected 'x' or 'y', got {axis!r}")
    sparse_shape = check_sparse_shape(sparse_shape)
    wx, wy, _ = as_triple(window_shape, "window_shape", 1)
    coords = check_coords(coords, sparse_shape)
    nz = sparse_shape[0]
    nwx, nwy, _ = num_windows(sparse_shape, (wx, wy, 1))
    x = coords[:, 3] + (wx // 2 if shifted else 0)
    y = coords[:, 2] + (wy // 2 if shifted else 0)
    win_x, win_y = x // wx, y // wy
    in_x, in_y = x - win_x * wx, y - win_y * wy
    if axis == "x":
        # rows of windows along y; travel along x, flipping direction on odd rows
        row, col, num_cols = win_y, _parity_flip(win_x, win_y, nwx), nwx
        inner = in_x * wy + _parity_flip(in_y, in_x, wy)
        inner = _parity_flip(inner, win_y, wx * wy)
        num_rows = nwy
    else:
        row, col, num_cols = win_x, _parity_flip(win_y, win_x, nwy), nwy
        inner = in_y * wx + _parity_flip(in_x, in_y, wx)
        inner = _parity_flip(inner, win_x, wx * wy)
        num_rows = nwx
    window_rank = (coords[:, 0] * num_rows + row) * num_cols + col
    return (window_rank * (wx * wy) + inner) * nz + coords[:, 1]


class FlattenedGroups(NamedTuple):
    """order: (V,) flattened position -> voxel row; voxel_index: (G, group_size) voxel rows of each
    group; key_padding_mask: (G, group_size) bool, True on padded (repeated) slots;
    slot_of_voxel: (V,) flat slot (`group * group_size + k`) holding each voxel (the inverse map)."""

    order: torch.Tensor
    voxel_index: torch.Tensor
    key_padding_mask: torch.Tensor
    slot_of_voxel: torch.Tensor


def _pad_groups(order: torch.Tensor, batch_sorted: torch.Tensor, group_size: int) -> FlattenedGroups:
    """Cut a batch-major order into groups of `group_size`, padding each sample's tail."""
    device = order.device
    seg = segments_of_sorted(batch_sorted)              # runs of samples in the (batch-major) order
    counts = seg.counts
    padded = torch.div(counts + group_size - 1, group_size, rounding_mode="floor") * group_size
    padded_end = torch.cumsum(padded, dim=0)
    padded_start = padded_end - padded
    total = int(padded.sum().item())
    slots = torch.arange(total, device=device)
    sample = expand_segments(padded_start, total)
    local = slots - padded_start[sample]
    n = counts[sample]
    is_pad = local >= n
    # FlatFormer's rule: a padded slot repeats the voxel one group earlier; a sample shorter than a
    # group has no earlier group, so it repeats its own voxels cyclically instead.
    source = torch.where(is_pad, torch.where(n >= group_size, local - group_size, local % n.clamp(min=1)), local)
    voxel_index = order[seg.starts[sample] + source].reshape(-1, group_size)
    slot_of_sorted = padded_start[seg.segment] + seg.rank
    slot_of_voxel = torch.empty_like(order)
    slot_of_voxel[order] = slot_of_sorted
    return FlattenedGroups(order, voxel_index, is_pad.reshape(-1, group_size), slot_of_voxel)


def flattened_window_groups(coords: torch.Tensor, sparse_shape: Sequence[int], window_shape: Sequence[int],
                            group_size: int, axis: str = "x", shifted: bool = False,
                            backend: str = "auto") -> FlattenedGroups:
    """Flattened-window groups of one ordering (`axis` "x"/"y", `shifted` by half a window).

    coords: (V, 4) int (batch, z, y, x). Groups never mix samples; each group is a contiguous run of
    the flattened order (padding slots repeat earlier voxels of the same sample).
    backend: "auto" (numba for CPU tensors outside export, else torch), "numba" or "torch".
    """
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size: expected a positive int, got {group_size!r}")
    if resolve_backend(backend, coords) == "numba":
        return _flattened_window_groups_numba(coords, sparse_shape, window_shape, group_size, axis, shifted)
    key = flattened_window_key(coords, sparse_shape, window_shape, axis, shifted)
    order = torch.argsort(key)  # keys are unique for unique coords: no stable sort needed (ONNX has none)
    return _pad_groups(order, coords[order, 0].long(), group_size)


def _flattened_window_groups_numba(coords, sparse_shape, window_shape, group_size, axis, shifted) -> FlattenedGroups:
    from . import _partition_numba as kernels
    if axis not in ("x", "y"):
        raise ValueError(f"axis: expected 'x' or 'y', got {axis!r}")
    sparse_shape = check_sparse_shape(sparse_shape)
    wx, wy, _ = as_triple(window_shape, "window_shape", 1)
    coords_np = coords_numpy(coords)
    nwx, nwy, _ = num_windows(sparse_shape, (wx, wy, 1))
    status, keys = kernels.flattened_keys(coords_np, *sparse_shape, wx, wy, nwx, nwy, axis == "x", bool(shifted))
    raise_on_status(status, sparse_shape)
    order = kernels.radix_argsort(keys)
    voxel_index, is_pad, slot_of_voxel = kernels.pad_groups(order, np.ascontiguousarray(coords_np[:, 0]), group_size)
    return FlattenedGroups(torch.from_numpy(order), torch.from_numpy(voxel_index), torch.from_numpy(is_pad),
                           torch.from_numpy(slot_of_voxel))


def flattened_window_mappings(coords: torch.Tensor, sparse_shape: Sequence[int], window_shape: Sequence[int],
                              group_size: int, backend: str = "auto") -> dict[str, FlattenedGroups]:
    """All four FlatFormer orderings, keyed by `ORDERS` ("x", "x_shift", "y", "y_shift")."""
    if resolve_backend(backend, coords) == "torch":
        coords = check_coords(coords, check_sparse_shape(sparse_shape))  # validate once, not per order
    return {name: flattened_window_groups(coords, sparse_shape, window_shape, group_size,
                                          axis=name[0], shifted=name.endswith("shift"), backend=backend)
            for name in ORDERS}


def flattened_window_order_reference(coords: torch.Tensor, sparse_shape: Sequence[int],
                                     window_shape: Sequence[int], axis: str = "x",
                                     shifted: bool = False) -> torch.Tensor:
    """FlatFormer's original signed-key formulation (`(-1) ** parity` products) as a reference.

    Only the batch offset differs from the original: FlatFormer's `batch * nx * ny * 10` can be
    smaller than the key range, so here it is the full key span.
    """
    nz, ny, nx = check_sparse_shape(sparse_shape)
    wx, wy, _ = as_triple(window_shape, "window_shape", 1)
    coords = coords.long()
    n2, m2 = 2 * wx, 2 * wy
    n1, m1 = 2 * (-(-nx // wx) + 1), 2 * (-(-ny // wy) + 1)
    x = coords[:, 3] + (wx // 2 if shifted else 0)
    y = coords[:, 2] + (wy // 2 if shifted else 0)
    x1, y1, x2, y2 = x // wx, y // wy, x % wx, y % wy
    sign = lambda t: 1 - 2 * (t % 2)  # noqa: E731  (-1) ** t for non-negative ints
    if axis == "x":
        key = (n1 * y1 + sign(y1) * x1) * n2 * m2 + sign(y1) * (m2 * x2 + sign(x2) * y2)
    else:
        key = (m1 * x1 + sign(x1) * y1) * m2 * n2 + sign(x1) * (n2 * y2 + sign(y2) * x2)
    span = (n1 * m1 + n1 + m1) * n2 * m2
    key = (key + coords[:, 0] * span) * nz + coords[:, 1]
    return torch.argsort(key, stable=True)


def flattened_window_groups_reference(coords: torch.Tensor, sparse_shape: Sequence[int],
                                      window_shape: Sequence[int], group_size: int, axis: str = "x",
                                      shifted: bool = False) -> torch.Tensor:
    """Reference grouping: FlatFormer's per-sample python loop building `flat2win`.

    Returns voxel_index (G, group_size) like `flattened_window_groups`.
    """
    order = flattened_window_order_reference(coords, sparse_shape, window_shape, axis, shifted)
    batch = coords[order, 0].long()
    rows = []
    for b in torch.unique(batch).tolist():
        members = order[batch == b]
        n = members.shape[0]
        n_pad = -(-n // group_size) * group_size
        idx = list(range(n))
        for p in range(n, n_pad):
            idx.append(p - group_size if n >= group_size else p % n)
        rows.append(members[torch.tensor(idx, dtype=torch.long)])
    if not rows:
        return torch.zeros(0, group_size, dtype=torch.long)
    return torch.cat(rows).reshape(-1, group_size)
