"""numba CPU kernels behind the window partition ops (`backend="numba"`, the default for CPU tensors).

The torch path spends most of its time in a comparison sort and a dozen small tensor ops, each a pass
over V. Here the window coordinates, a stable LSD radix sort of the small-range integer keys, the run
detection and the output layouts are fused into a few passes. Outputs are identical to the torch path
(`tests/ops/test_partition_numba.py` compares every field); the torch path stays for GPUs and export.

Callers (the public functions) validate shapes and dtypes; `window_coords` additionally reports
coordinates outside the grid through a status code, so no kernel indexes out of bounds.
"""
import numpy as np
from numba import njit

from .._radix_sort_numba import radix_argsort  # noqa: F401  (re-exported: the partition ops sort with it)

STATUS_OK, STATUS_NEGATIVE, STATUS_OUTSIDE = 0, 1, 2


@njit(cache=True)
def window_coords(coords, nz, ny, nx, wx, wy, wz, sx, sy, sz, nwx, nwy, nwz):
    """(status, window_id (V,), coords_in_window (V, 3) z, y, x) as `windows.window_partition`."""
    n = coords.shape[0]
    window_id = np.empty(n, np.int64)
    in_window = np.empty((n, 3), np.int64)
    for i in range(n):
        b, z, y, x = coords[i, 0], coords[i, 1], coords[i, 2], coords[i, 3]
        if b < 0 or z < 0 or y < 0 or x < 0:
            return STATUS_NEGATIVE, window_id, in_window
        if z >= nz or y >= ny or x >= nx:
            return STATUS_OUTSIDE, window_id, in_window
        z += sz
        y += sy
        x += sx
        win_z, win_y, win_x = z // wz, y // wy, x // wx
        window_id[i] = ((b * nwz + win_z) * nwy + win_y) * nwx + win_x
        in_window[i, 0] = z - win_z * wz
        in_window[i, 1] = y - win_y * wy
        in_window[i, 2] = x - win_x * wx
    return STATUS_OK, window_id, in_window


@njit(cache=True)
def runs(sorted_group):
    """(segment (V,), starts (W,), counts (W,)) of the runs of equal ids in a sorted (V,) array."""
    n = sorted_group.shape[0]
    segment = np.empty(n, np.int64)
    starts = np.empty(n, np.int64)
    w = -1
    for p in range(n):
        if p == 0 or sorted_group[p] != sorted_group[p - 1]:
            w += 1
            starts[w] = p
        segment[p] = w
    starts = starts[:w + 1].copy()
    counts = np.empty(w + 1, np.int64)
    for s in range(w + 1):
        end = starts[s + 1] if s < w else n
        counts[s] = end - starts[s]
    return segment, starts, counts


@njit(cache=True)
def in_window_keys(window_id, in_window, wx, wy, wz, axis_x):
    """`window_id * volume + in-window rank key`, x-major (`axis_x`) or y-major (`rotated_sets.in_window_sort_key`)."""
    n = window_id.shape[0]
    volume = wx * wy * wz
    keys = np.empty(n, np.int64)
    for i in range(n):
        z, y, x = in_window[i, 0], in_window[i, 1], in_window[i, 2]
        inner = (x * wy + y) * wz + z if axis_x else (y * wx + x) * wz + z
        keys[i] = window_id[i] * volume + inner
    return keys


@njit(cache=True)
def set_layout(starts, counts, set_size):
    """Slot ranks of DSVT's rotated sets: (rank (num_sets, S) in-window rank of each slot, window (num_sets,)
    contiguous window index, repeat (num_sets, S) True on a slot repeating the previous slot's voxel)."""
    num_windows = counts.shape[0]
    num_sets = 0
    for w in range(num_windows):
        num_sets += (counts[w] + set_size - 1) // set_size
    rank = np.empty((num_sets, set_size), np.int64)
    window = np.empty(num_sets, np.int64)
    repeat = np.zeros((num_sets, set_size), np.bool_)
    s = 0
    for w in range(num_windows):
        n = counts[w]
        n_sets = (n + set_size - 1) // set_size
        for j in range(n_sets):
            window[s] = w
            for k in range(set_size):
                r = ((j * set_size + k) * n) // (n_sets * set_size)
                rank[s, k] = r
                if k > 0 and r == rank[s, k - 1]:
                    repeat[s, k] = True
            s += 1
    return rank, window, repeat


@njit(cache=True)
def sets_of_order(order, starts, rank, window, repeat):
    """(voxel_index (num_sets, S), slot_of_voxel (V,)) of one in-window order."""
    num_sets, set_size = rank.shape
    voxel_index = np.empty((num_sets, set_size), np.int64)
    slot_of_voxel = np.empty(order.shape[0], np.int64)
    for s in range(num_sets):
        base = starts[window[s]]
        for k in range(set_size):
            v = order[base + rank[s, k]]
            voxel_index[s, k] = v
            if not repeat[s, k]:
                slot_of_voxel[v] = s * set_size + k
    return voxel_index, slot_of_voxel


@njit(cache=True)
def flattened_keys(coords, nz, ny, nx, wx, wy, nwx, nwy, axis_x, shifted):
    """(status, serpentine sort key of every voxel) as `flattened_windows.flattened_window_key`."""
    n = coords.shape[0]
    keys = np.empty(n, np.int64)
    for i in range(n):
        if coords[i, 0] < 0 or coords[i, 1] < 0 or coords[i, 2] < 0 or coords[i, 3] < 0:
            return STATUS_NEGATIVE, keys
        if coords[i, 1] >= nz or coords[i, 2] >= ny or coords[i, 3] >= nx:
            return STATUS_OUTSIDE, keys
    shift_x = wx // 2 if shifted else 0
    shift_y = wy // 2 if shifted else 0
    area = wx * wy
    for i in range(n):
        x = coords[i, 3] + shift_x
        y = coords[i, 2] + shift_y
        win_x, win_y = x // wx, y // wy
        in_x, in_y = x - win_x * wx, y - win_y * wy
        if axis_x:
            row, num_rows, num_cols = win_y, nwy, nwx
            col = win_x if win_y % 2 == 0 else nwx - 1 - win_x
            inner = in_x * wy + (in_y if in_x % 2 == 0 else wy - 1 - in_y)
            if win_y % 2 == 1:
                inner = area - 1 - inner
        else:
            row, num_rows, num_cols = win_x, nwx, nwy
            col = win_y if win_x % 2 == 0 else nwy - 1 - win_y
            inner = in_y * wx + (in_x if in_y % 2 == 0 else wx - 1 - in_x)
            if win_x % 2 == 1:
                inner = area - 1 - inner
        window_rank = (coords[i, 0] * num_rows + row) * num_cols + col
        keys[i] = (window_rank * area + inner) * nz + coords[i, 1]
    return STATUS_OK, keys


@njit(cache=True)
def pad_groups(order, batch_of_voxel, group_size):
    """(voxel_index (G, group_size), key_padding_mask, slot_of_voxel (V,)) as `flattened_windows._pad_groups`."""
    n_total = order.shape[0]
    sorted_batch = np.empty(n_total, np.int64)
    for p in range(n_total):
        sorted_batch[p] = batch_of_voxel[order[p]]
    _, starts, counts = runs(sorted_batch)
    total = 0
    for s in range(counts.shape[0]):
        total += (counts[s] + group_size - 1) // group_size * group_size
    voxel_index = np.empty(total, np.int64)
    is_pad = np.zeros(total, np.bool_)
    slot_of_voxel = np.empty(n_total, np.int64)
    slot = 0
    for s in range(counts.shape[0]):
        n = counts[s]
        start = starts[s]
        padded = (n + group_size - 1) // group_size * group_size
        for local in range(padded):
            if local < n:
                v = order[start + local]
                voxel_index[slot] = v
                slot_of_voxel[v] = slot
            else:
                # FlatFormer repeats the voxel one group earlier; a sample shorter than a group cycles
                source = local - group_size if n >= group_size else local % n
                voxel_index[slot] = order[start + source]
                is_pad[slot] = True
            slot += 1
    return voxel_index.reshape(-1, group_size), is_pad.reshape(-1, group_size), slot_of_voxel


@njit(cache=True)
def scatter_of_order(order, segment):
    """(inverse (V,), window_of_voxel (V,)) for a window-sorted `order` and its run index per position."""
    n = order.shape[0]
    inverse = np.empty(n, np.int64)
    window_of_voxel = np.empty(n, np.int64)
    for p in range(n):
        inverse[order[p]] = p
        window_of_voxel[order[p]] = segment[p]
    return inverse, window_of_voxel


@njit(cache=True)
def sst_layout(order, segment, starts, counts, budgets, lowers, uppers):
    """Per-voxel (keep, level, slot) and per-window (level, row) of SST's drop levels, as
    `sst_regions.sst_region_groups` computes them (windows in run order, first matching level wins)."""
    num_windows = counts.shape[0]
    num_levels = budgets.shape[0]
    window_level = np.full(num_windows, -1, np.int64)
    window_base = np.zeros(num_windows, np.int64)
    rows_per_level = np.zeros(num_levels, np.int64)
    for w in range(num_windows):
        for level in range(num_levels):
            if lowers[level] <= counts[w] < uppers[level]:
                window_level[w] = level
                rows_per_level[level] += 1
                break
    offset = np.empty(num_levels, np.int64)
    running = 1  # flat row 0 is the zero row of `flat_slots`
    for level in range(num_levels):
        offset[level] = running
        running += rows_per_level[level] * budgets[level]
    row_counter = np.zeros(num_levels, np.int64)
    window_row = np.zeros(num_windows, np.int64)
    for w in range(num_windows):
        level = window_level[w]
        if level >= 0:
            window_row[w] = row_counter[level]
            window_base[w] = offset[level] + row_counter[level] * budgets[level]
            row_counter[level] += 1
    n = order.shape[0]
    keep = np.empty(n, np.bool_)
    level_of_voxel = np.empty(n, np.int64)
    slot_of_voxel = np.empty(n, np.int64)
    for p in range(n):
        w = segment[p]
        rank = p - starts[w]
        level = window_level[w]
        budget = budgets[level] if level >= 0 else 0
        v = order[p]
        keep[v] = rank < budget
        level_of_voxel[v] = level
        slot_of_voxel[v] = window_base[w] + rank if rank < budget else 0
    return keep, level_of_voxel, slot_of_voxel, window_level, rows_per_level


@njit(cache=True)
def sst_level(order, starts, counts, window_level, level, rows, max_tokens):
    """(voxel_index (rows, max_tokens), key_padding_mask, window index (rows,)) of one drop level."""
    voxel_index = np.empty((rows, max_tokens), np.int64)
    mask = np.empty((rows, max_tokens), np.bool_)
    windows = np.empty(rows, np.int64)
    r = 0
    for w in range(counts.shape[0]):
        if window_level[w] != level:
            continue
        n = counts[w]
        last = min(n, max_tokens) - 1  # padding slots point at the window's last kept voxel
        for k in range(max_tokens):
            voxel_index[r, k] = order[starts[w] + min(k, last)]
            mask[r, k] = k >= n
        windows[r] = w
        r += 1
    return voxel_index, mask, windows
