"""SST regional grouping (Fan et al., "Embracing Single Stride 3D Object Detector with Sparse
Transformer").

Windows are bucketed by their voxel count into a few token budgets ("drop levels"). SST's drop
policy: a window whose count `N` lies in `[lower, upper)` of level `l` is padded to `max_tokens[l]`
slots; when `N > max_tokens[l]` (possible in the last, open-ended level, or with a budget below the
range) the voxels of in-window rank `>= max_tokens[l]` are **dropped** from attention. Ranks follow
the order of appearance of the voxel rows (shuffle the rows beforehand to drop at random, as SST
does in training). A window matching no level drops all its voxels.

On CPU tensors (outside export) fused numba kernels compute the same buckets (`backend="auto"`);
`backend="torch"` forces the exportable path.

Default levels are SST's Waymo training setting: (30 tokens for 0-30 voxels, 60 for 30-60, 100 for
60 and more).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from .windows import (as_triple, check_sparse_shape, coords_numpy, resolve_backend, sorted_segments, window_partition,
                      window_partition_numpy)

DEFAULT_DROP_LEVELS = ((30, 0, 30), (60, 30, 60), (100, 60, 1 << 40))


class SSTLevel(NamedTuple):
    """voxel_index: (W_l, max_tokens) int64; key_padding_mask: (W_l, max_tokens) bool (True = padding);
    window_id: (W_l,) int64."""

    voxel_index: torch.Tensor
    key_padding_mask: torch.Tensor
    window_id: torch.Tensor


class SSTRegions(NamedTuple):
    """levels: one `SSTLevel` per drop level; keep_mask: (V,) bool, False for dropped voxels;
    level_of_voxel: (V,) int64 (-1 when the window matches no level); coords_in_window: (V, 3);
    slot_of_voxel: (V,) int64, where each voxel's attention output is in `flat_slots(per_level)` (see there):
    `1 + offset_l + row * max_tokens_l + rank` for a kept voxel, 0 (the leading zero row) for a dropped one."""

    levels: tuple
    keep_mask: torch.Tensor
    level_of_voxel: torch.Tensor
    coords_in_window: torch.Tensor
    slot_of_voxel: torch.Tensor


def flat_slots(per_level: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack per-level slot tensors `(W_l, max_tokens_l, C)` into `(1 + sum_l W_l * max_tokens_l, C)` behind
    one zero row, the layout `SSTRegions.slot_of_voxel` indexes: `flat_slots(outs)[regions.slot_of_voxel]`
    takes every kept voxel's own slot back to voxel order (and 0 for dropped voxels) with one gather.

    A gather instead of `index_put(voxel_index[~key_padding_mask], ...)`: the boolean mask gives a
    data-dependent size whose bound (W_l * max_tokens_l, unbounded W_l) overflows int64 in the ONNX exporter's
    runtime asserts, and padding slots would otherwise need masking out of the scatter.
    """
    first = per_level[0]
    rows = [first.new_zeros((1,) + tuple(first.shape[2:]))]
    rows += [t.reshape((-1,) + tuple(t.shape[2:])) for t in per_level]
    return torch.cat(rows, dim=0)


def _check_levels(drop_levels) -> tuple[tuple[int, int, int], ...]:
    levels = tuple(tuple(int(v) for v in level) for level in drop_levels)
    if not levels or any(len(level) != 3 for level in levels):
        raise ValueError(f"drop_levels: expected a non-empty sequence of (max_tokens, lower, upper), got {drop_levels}")
    for max_tokens, lower, upper in levels:
        if max_tokens < 1 or lower < 0 or upper <= lower:
            raise ValueError(f"drop_levels: invalid level (max_tokens={max_tokens}, lower={lower}, upper={upper})")
    return levels


def sst_region_groups(coords: torch.Tensor, sparse_shape: Sequence[int], window_shape: Sequence[int],
                      shift: Sequence[int] = (0, 0, 0),
                      drop_levels: Sequence[Sequence[int]] = DEFAULT_DROP_LEVELS, backend: str = "auto") -> SSTRegions:
    """Bucket the windows of `coords` (V, 4) (batch, z, y, x) into SST's token budgets.

    drop_levels: sequence of (max_tokens, lower, upper); a window with `lower <= N < upper` voxels
    belongs to the level (the first matching level when ranges overlap).
    backend: "auto" (numba for CPU tensors outside export, else torch), "numba" or "torch".
    """
    levels = _check_levels(drop_levels)
    if resolve_backend(backend, coords) == "numba":
        return _sst_region_groups_numba(coords, check_sparse_shape(sparse_shape), as_triple(window_shape, "window_shape", 1),
                                        as_triple(shift, "shift", 0), levels)
    part = window_partition(coords, sparse_shape, window_shape, shift)
    seg = sorted_segments(part.window_id)          # stable sort keeps the order of appearance
    device = part.window_id.device
    counts = seg.counts
    window_level = torch.full_like(counts, -1)
    window_budget = torch.zeros_like(counts)
    for index, (max_tokens, lower, upper) in enumerate(levels):
        hit = (counts >= lower) & (counts < upper) & (window_level < 0)
        window_level = torch.where(hit, torch.full_like(counts, index), window_level)
        window_budget = torch.where(hit, torch.full_like(counts, max_tokens), window_budget)
    keep_sorted = seg.rank < window_budget[seg.segment]
    keep_mask = torch.empty_like(keep_sorted)
    keep_mask[seg.order] = keep_sorted
    level_of_voxel = torch.empty_like(part.window_id)
    level_of_voxel[seg.order] = window_level[seg.segment]

    # Row of each window inside its level (levels list their windows in segment order) and the first flat
    # slot of that row; tensor arithmetic only, so the exported graph has no data-dependent branch.
    window_base = torch.zeros_like(counts)
    offset = counts.new_ones(())  # flat row 0 is the zero row of `flat_slots`
    for index, (max_tokens, _, _) in enumerate(levels):
        hit = window_level == index
        row = torch.cumsum(hit.long(), dim=0) - 1
        window_base = torch.where(hit, offset + row * max_tokens, window_base)
        offset = offset + hit.long().sum() * max_tokens
    slot_sorted = torch.where(keep_sorted, window_base[seg.segment] + seg.rank, torch.zeros_like(seg.rank))
    slot_of_voxel = torch.empty_like(slot_sorted)
    slot_of_voxel[seg.order] = slot_sorted

    out = []
    for index, (max_tokens, _, _) in enumerate(levels):
        windows = torch.nonzero(window_level == index).reshape(-1)
        n = counts[windows][:, None]
        slot = torch.arange(max_tokens, device=device)[None, :]
        # padding slots point at the window's last kept voxel so gathers stay in range
        rank = torch.minimum(slot, torch.minimum(n, torch.full_like(n, max_tokens)) - 1)
        voxel_index = seg.order[seg.starts[windows][:, None] + rank]
        mask = slot >= n
        window_id = part.window_id[seg.order[seg.starts[windows]]]
        out.append(SSTLevel(voxel_index, mask.expand_as(voxel_index).clone(), window_id))
    return SSTRegions(tuple(out), keep_mask, level_of_voxel, part.coords_in_window, slot_of_voxel)


def _sst_region_groups_numba(coords, sparse_shape, window_shape, shift, levels) -> SSTRegions:
    from . import _partition_numba as kernels
    window_id, in_window = window_partition_numpy(coords_numpy(coords), sparse_shape, window_shape, shift)
    order = kernels.radix_argsort(window_id)  # stable: order of appearance inside a window
    segment, starts, counts = kernels.runs(window_id[order])
    budgets, lowers, uppers = (np.array(column, np.int64) for column in zip(*levels))
    keep, level_of_voxel, slot_of_voxel, window_level, rows = kernels.sst_layout(order, segment, starts, counts,
                                                                                 budgets, lowers, uppers)
    out = []
    for index, (max_tokens, _, _) in enumerate(levels):
        voxel_index, mask, windows = kernels.sst_level(order, starts, counts, window_level, index, rows[index],
                                                       max_tokens)
        out.append(SSTLevel(torch.from_numpy(voxel_index), torch.from_numpy(mask),
                            torch.from_numpy(window_id[order[starts[windows]]])))
    return SSTRegions(tuple(out), torch.from_numpy(keep), torch.from_numpy(level_of_voxel), torch.from_numpy(in_window),
                      torch.from_numpy(slot_of_voxel))
