"""numba CPU kernels behind `pc3d.ops.voxelize` (backend="numba").

Callers (`voxelize.py`) validate every argument first; these kernels additionally never index out of
bounds whatever the point values are: a voxel index is only formed after the float index passed the
`0 <= i < grid` test (NaN fails every comparison), and all buffers are sized from N or V.

Voxel index arithmetic is float32 exactly like spconv's `PointToVoxel`:
`floor((p - range_min) / voxel_size)` with float32 operands (no fastmath, so no reciprocal multiply).
"""
import numpy as np
from numba import njit, prange

from ._radix_sort_numba import radix_argsort, radix_sort_packed

# Fibonacci hashing constant (2^64 / golden ratio): spreads consecutive linear voxel keys over the table.
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _table_bits(n: int) -> int:
    """log2 of a power-of-two table capacity >= 2 n (load factor <= 1/2 keeps probe chains short)."""
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    return bits


_FLOAT32_MAX = np.float32(3.4028235e38)

# Below this many points the key pass runs on one thread: a parallel region on a busy machine can wait
# a whole scheduler quantum (~10 ms) for a preempted worker, far more than it saves on a 100k-point scan.
PARALLEL_MIN_POINTS = 1_000_000

# Points per block of the key pass. The (N, C) rows are first copied into x / y / z columns so that the
# arithmetic runs on contiguous float32 lanes: LLVM vectorises that loop, not one over strided rows
# (2.3x faster on the KITTI scan). Any size from 256 to 4096 measured the same.
BLOCK = 1024


@njit(cache=True, inline="always")
def _block_voxel_indices(points, start, stop, range_min, voxel_size, grid_x, grid_y, grid_z, keys, ix, iy, iz):
    """Voxel key (z * ny + y) * nx + x of points[start:stop] into keys[0:stop-start], and its x / y / z indices.

    A key is -1 outside the grid and -2 for a non-finite coordinate; its indices are then 0. The float
    index is tested against the grid before any integer is formed (NaN fails every comparison), so no
    caller can index out of bounds whatever the points hold.
    """
    m = stop - start
    xs = np.empty(m, np.float32)
    ys = np.empty(m, np.float32)
    zs = np.empty(m, np.float32)
    for j in range(m):
        xs[j] = points[start + j, 0]
        ys[j] = points[start + j, 1]
        zs[j] = points[start + j, 2]
    low_x, low_y, low_z = range_min[0], range_min[1], range_min[2]
    # grid sizes come from rounded float32 quotients (`voxel_grid`), so they are exact in float32
    limit_x, limit_y, limit_z = np.float32(grid_x), np.float32(grid_y), np.float32(grid_z)
    size_x, size_y, size_z = voxel_size[0], voxel_size[1], voxel_size[2]
    for j in range(m):
        x = xs[j]
        y = ys[j]
        z = zs[j]
        fx = np.floor((x - low_x) / size_x)
        fy = np.floor((y - low_y) / size_y)
        fz = np.floor((z - low_z) / size_z)
        inside = (fx >= 0) & (fx < limit_x) & (fy >= 0) & (fy < limit_y) & (fz >= 0) & (fz < limit_z)
        finite = (np.abs(x) <= _FLOAT32_MAX) & (np.abs(y) <= _FLOAT32_MAX) & (np.abs(z) <= _FLOAT32_MAX)
        x_index = np.int32(fx if inside else np.float32(0))
        y_index = np.int32(fy if inside else np.float32(0))
        z_index = np.int32(fz if inside else np.float32(0))
        key = (np.int64(z_index) * grid_y + y_index) * grid_x + x_index
        keys[j] = key if inside else (-1 if finite else -2)
        ix[j] = x_index
        iy[j] = y_index
        iz[j] = z_index


@njit(cache=True, inline="always")
def _keys_of_block(points, block, range_min, voxel_size, grid_x, grid_y, grid_z, keys):
    start = block * BLOCK
    stop = min(start + BLOCK, points.shape[0])
    indices = np.empty((3, BLOCK), np.int32)
    _block_voxel_indices(points, start, stop, range_min, voxel_size, grid_x, grid_y, grid_z,
                         keys[start:stop], indices[0], indices[1], indices[2])


@njit(cache=True, parallel=True)
def _point_voxel_keys_parallel(points, range_min, voxel_size, grid_x, grid_y, grid_z):
    n = points.shape[0]
    keys = np.empty(n, np.int64)
    for block in prange((n + BLOCK - 1) // BLOCK):
        _keys_of_block(points, block, range_min, voxel_size, grid_x, grid_y, grid_z, keys)
    return keys


@njit(cache=True)
def _point_voxel_keys_serial(points, range_min, voxel_size, grid_x, grid_y, grid_z):
    n = points.shape[0]
    keys = np.empty(n, np.int64)
    for block in range((n + BLOCK - 1) // BLOCK):
        _keys_of_block(points, block, range_min, voxel_size, grid_x, grid_y, grid_z, keys)
    return keys


def point_voxel_keys(points, range_min, voxel_size, grid_x, grid_y, grid_z):
    """(N,) int64 linear voxel key per point (-1 out of range, -2 non-finite); a pure map."""
    kernel = _point_voxel_keys_parallel if points.shape[0] >= PARALLEL_MIN_POINTS else _point_voxel_keys_serial
    return kernel(points, range_min, voxel_size, grid_x, grid_y, grid_z)


@njit(cache=True, inline="always")
def _empty_table(capacity):
    """Open-addressing table for up to `capacity` keys: (slot keys (-1 = free), slot rows, index mask, hash shift).

    The key sits in the table next to its row, so a probe is one random access, not two dependent ones
    (table, then the voxel's key): 10-15% of the hard voxelization time on the KITTI scan.
    """
    bits = _table_bits(capacity)
    return np.full(1 << bits, -1, np.int64), np.empty(1 << bits, np.int32), (1 << bits) - 1, np.uint64(64 - bits)


@njit(cache=True, inline="always")
def _probe(slot_keys, mask, shift, key):
    """Slot holding `key`, or the free slot (key -1) where it belongs (linear probing)."""
    slot = np.int64((np.uint64(key) * _HASH_MULTIPLIER) >> shift)
    while slot_keys[slot] != key and slot_keys[slot] != -1:
        slot = (slot + 1) & mask
    return slot


@njit(cache=True, inline="always")
def _grid_index(value, low, size):
    return np.int32(np.floor((value - low) / size))


@njit(cache=True)
def first_come_voxels(points, keys, batch_index, range_min, voxel_size):
    """Give every distinct key >= 0 a voxel row in order of its first point (no caps).

    `batch_index` is the (N,) sample id of every point, or an empty array for a single sample (batch 0).
    Overwrites `keys` IN PLACE with each point's first-come row (-1 if dropped): one less N-sized
    temporary (fresh pages cost a page fault each). Returns (voxel_keys (C,) int64,
    coords (C, 4) int32 (batch, z, y, x), counts (C,) int32, V, num_nonfinite); only the first V rows
    are voxels (C = number of valid points, an upper bound of V), the caller slices them.
    """
    n = keys.shape[0]
    batched = batch_index.shape[0] == n and n > 0
    capacity = 0
    for i in range(n):
        if keys[i] >= 0:
            capacity += 1
    slot_keys, slot_rows, mask, shift = _empty_table(capacity)
    voxel_keys = np.empty(capacity, np.int64)
    coords = np.empty((capacity, 4), np.int32)
    counts = np.zeros(capacity, np.int32)
    num_voxels = 0
    num_nonfinite = 0
    # LiDAR scans are stored ring by ring, so consecutive points often share a voxel: remembering the
    # last lookup skips many hash probes.
    last_key = -3
    last_row = -1
    for i in range(n):
        key = keys[i]
        if key < 0:
            if key == -2:
                num_nonfinite += 1
            keys[i] = -1
            continue
        if key != last_key:
            slot = _probe(slot_keys, mask, shift, key)
            if slot_keys[slot] == key:
                row = slot_rows[slot]
            else:
                row = num_voxels
                slot_keys[slot] = key
                slot_rows[slot] = row
                voxel_keys[row] = key
                # recompute the indices from the point (and the batch from its id): cheaper than
                # 4 int64 divisions of the key
                coords[row, 0] = batch_index[i] if batched else 0
                coords[row, 1] = _grid_index(points[i, 2], range_min[2], voxel_size[2])
                coords[row, 2] = _grid_index(points[i, 1], range_min[1], voxel_size[1])
                coords[row, 3] = _grid_index(points[i, 0], range_min[0], voxel_size[0])
                num_voxels += 1
            last_key = key
            last_row = row
        keys[i] = last_row
        counts[last_row] += 1
    return voxel_keys, coords, counts, num_voxels, num_nonfinite


@njit(cache=True)
def hard_voxels_first_come(points, range_min, voxel_size, grid_x, grid_y, grid_z, max_voxels, max_points):
    """Hard voxelization in one pass, spconv's algorithm (first-come voxels, capped points).

    Keys are computed a block at a time into L1-sized buffers (no N-sized key array). Points are copied
    straight into a (capacity, P, C) buffer whose rows are used in order, so only the first V rows are
    ever touched (untouched pages of a large buffer cost nothing).
    Returns (voxels (capacity, P, C), coords (capacity, 3) int32 zyx, counts (capacity,) int32,
    V, num_nonfinite); rows >= V are garbage and must be sliced off by the caller.
    """
    n, c = points.shape
    capacity = min(n, max_voxels)
    slot_keys, slot_rows, mask, shift = _empty_table(capacity)
    voxels = np.empty((capacity, max_points, c), np.float32)
    coords = np.empty((capacity, 3), np.int32)
    counts = np.empty(capacity, np.int32)
    block_keys = np.empty(BLOCK, np.int64)
    block_indices = np.empty((3, BLOCK), np.int32)
    num_voxels = 0
    num_nonfinite = 0
    last_key = -3
    row = -1
    # Points stored in the current voxel `row`, kept in a local between key changes: consecutive points
    # mostly share a voxel, and a counts[row] read-modify-write per point serialises on store forwarding.
    count = max_points
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        _block_voxel_indices(points, start, stop, range_min, voxel_size, grid_x, grid_y, grid_z,
                             block_keys, block_indices[0], block_indices[1], block_indices[2])
        for j in range(stop - start):
            key = block_keys[j]
            if key < 0:
                if key == -2:
                    num_nonfinite += 1
                continue
            if key != last_key:
                if row >= 0:
                    counts[row] = count
                last_key = key
                slot = _probe(slot_keys, mask, shift, key)
                if slot_keys[slot] == key:
                    row = slot_rows[slot]
                    count = counts[row]
                elif num_voxels < capacity:
                    row = num_voxels
                    slot_keys[slot] = key
                    slot_rows[slot] = row
                    coords[row, 0] = block_indices[2, j]
                    coords[row, 1] = block_indices[1, j]
                    coords[row, 2] = block_indices[0, j]
                    voxels[row] = 0.0
                    num_voxels += 1
                    count = 0
                else:  # max_voxels reached: the point is dropped, and so is every later point of its voxel
                    row = -1
                    count = max_points
            if count < max_points:
                i = start + j
                for k in range(c):
                    voxels[row, count, k] = points[i, k]
                count += 1
    if row >= 0:
        counts[row] = count
    return voxels, coords, counts, num_voxels, num_nonfinite


@njit(cache=True)
def sorted_voxels(point_row, voxel_keys, coords, counts):
    """Re-number first-come voxel rows in ascending key order (= lexicographic (batch, z, y, x)).

    `point_row` (N,) int64 first-come rows are rewritten IN PLACE to sorted rows (-1 stays -1).
    Returns (coords (V, 4) int32 (batch, z, y, x), counts (V,) int32), sorted.
    """
    v = voxel_keys.shape[0]
    order = radix_argsort(voxel_keys)
    rank = np.empty(v, np.int64)
    sorted_coords = np.empty((v, 4), np.int32)
    sorted_counts = np.empty(v, np.int32)
    for r in range(v):
        o = order[r]
        rank[o] = r
        for a in range(4):
            sorted_coords[r, a] = coords[o, a]
        sorted_counts[r] = counts[o]
    for i in range(point_row.shape[0]):
        row = point_row[i]
        if row >= 0:
            point_row[i] = rank[row]
    return sorted_coords, sorted_counts


@njit(cache=True)
def sorted_voxels_by_cell_table(keys, grid_x, grid_y, grid_z, batches):
    """Sorted dynamic voxels through a dense per-cell table: no hash, no sort, for small grids.

    A counting sort over every cell key: count the points of each cell, walk the cells in key order
    (= (batch, z, y, x), so coordinates come from the loop counters, no division) numbering the occupied
    ones, then look every point's row up. Memory and time grow with the number of cells, so the caller
    uses it only when there are few cells per point (pillar grids). Overwrites `keys` IN PLACE with each
    point's sorted row (-1 if dropped). Returns (coords (V, 4) int32 (batch, z, y, x), counts (V,) int32,
    num_nonfinite), same as `first_come_voxels` followed by `sorted_voxels`.
    """
    n = keys.shape[0]
    table = np.zeros(batches * grid_x * grid_y * grid_z, np.int32)
    num_nonfinite = 0
    for i in range(n):
        key = keys[i]
        if key >= 0:
            table[key] += 1
        elif key == -2:
            num_nonfinite += 1
    num_voxels = 0
    for cell in range(table.shape[0]):
        if table[cell] > 0:
            num_voxels += 1
    coords = np.empty((num_voxels, 4), np.int32)
    counts = np.empty(num_voxels, np.int32)
    row = 0
    cell = 0
    for b in range(batches):
        for z in range(grid_z):
            for y in range(grid_y):
                for x in range(grid_x):
                    count = table[cell]
                    if count > 0:
                        coords[row, 0] = b
                        coords[row, 1] = z
                        coords[row, 2] = y
                        coords[row, 3] = x
                        counts[row] = count
                        table[cell] = row
                        row += 1
                    cell += 1
    for i in range(n):
        key = keys[i]
        keys[i] = table[key] if key >= 0 else -1
    return coords, counts, num_nonfinite


@njit(cache=True)
def first_come_voxels_by_cell_table(points, keys, batch_index, range_min, voxel_size, num_keys):
    """`first_come_voxels` through a dense per-cell row table instead of a hash table, for small grids.

    One direct lookup per point (`table[key]`, -1 = not seen yet) instead of a hash probe. Returns
    (coords (C, 4) int32 (batch, z, y, x), counts (C,) int32, V, num_nonfinite) with C = N; only the first
    V rows are voxels. Overwrites `keys` IN PLACE with each point's first-come row (-1 if dropped).
    """
    n = keys.shape[0]
    batched = batch_index.shape[0] == n and n > 0
    table = np.full(num_keys, -1, np.int32)
    coords = np.empty((n, 4), np.int32)
    counts = np.empty(n, np.int32)
    num_voxels = 0
    num_nonfinite = 0
    for i in range(n):
        key = keys[i]
        if key < 0:
            if key == -2:
                num_nonfinite += 1
            keys[i] = -1
            continue
        row = table[key]
        if row < 0:
            row = num_voxels
            table[key] = row
            coords[row, 0] = batch_index[i] if batched else 0
            coords[row, 1] = _grid_index(points[i, 2], range_min[2], voxel_size[2])
            coords[row, 2] = _grid_index(points[i, 1], range_min[1], voxel_size[1])
            coords[row, 3] = _grid_index(points[i, 0], range_min[0], voxel_size[0])
            counts[row] = 0
            num_voxels += 1
        counts[row] += 1
        keys[i] = row
    return coords, counts, num_voxels, num_nonfinite


# Voxels sampled by `occupied_fraction`: those whose key hash falls in 1 / 2**_SAMPLE_BITS of the hash space.
_SAMPLE_BITS = 4


@njit(cache=True)
def occupied_fraction(keys):
    """(estimate of V / number of valid keys, number of sampled points) for keys >= 0.

    The sample keeps every point of a pseudo-random 1/16 of the voxels (chosen by a hash of the key), so
    distinct sampled keys / sampled points estimates voxels per point without bias, whatever the point
    order, at about 5% of the cost of the voxelization itself (the sample's table fits in L2).
    """
    n = keys.shape[0]
    sample_shift = np.uint64(64 - _SAMPLE_BITS)
    sampled = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        key = keys[i]
        if key >= 0 and (np.uint64(key) * _HASH_MULTIPLIER) >> sample_shift == 0:
            sampled[m] = key
            m += 1
    if m == 0:
        return 0.0, 0
    # a second hash of the sampled keys: their top bits are all 0, so rotate the product
    slot_keys, slot_rows, mask, shift = _empty_table(m)
    distinct = 0
    for j in range(m):
        key = sampled[j]
        slot = np.int64(((np.uint64(key) * _HASH_MULTIPLIER) >> np.uint64(_SAMPLE_BITS)) & np.uint64(mask))
        while slot_keys[slot] != key and slot_keys[slot] != -1:
            slot = (slot + 1) & mask
        if slot_keys[slot] == -1:
            slot_keys[slot] = key
            distinct += 1
    return distinct / m, m


@njit(cache=True)
def sorted_voxels_by_point_sort(points, keys, batch_index, range_min, voxel_size):
    """Sorted dynamic voxels by radix-sorting the points' keys: no hash table.

    Each valid point becomes one int64 word `key << index_bits | point index`; a stable LSD radix sort on
    the key bits groups the points voxel by voxel in ascending key order, and one sequential scan then
    numbers the voxels. On a dense grid (most voxels hold 1-2 points) this streams through memory where
    the hash table of `first_come_voxels` + `sorted_voxels` misses the cache on nearly every point.
    The caller guarantees that key bits + index bits fit in 63 bits. `batch_index` as in
    `first_come_voxels`. Overwrites `keys` IN PLACE with each point's sorted row (-1 if dropped).
    Returns (coords (V, 4) int32 (batch, z, y, x), counts (V,) int32, num_nonfinite), same as
    `first_come_voxels` followed by `sorted_voxels`.
    """
    n = keys.shape[0]
    batched = batch_index.shape[0] == n and n > 0
    largest = 0
    m = 0
    num_nonfinite = 0
    for i in range(n):
        key = keys[i]
        if key >= 0:
            m += 1
            if key > largest:
                largest = key
        elif key == -2:
            num_nonfinite += 1
    key_bits = 1
    while key_bits < 63 and (np.int64(1) << key_bits) <= largest:
        key_bits += 1
    index_bits = 1
    while index_bits < 63 and (np.int64(1) << index_bits) < n:
        index_bits += 1
    words = np.empty(m, np.int64)
    j = 0
    for i in range(n):
        key = keys[i]
        if key >= 0:
            words[j] = (key << index_bits) | i
            j += 1
        keys[i] = -1
    words = radix_sort_packed(words, index_bits, key_bits)
    num_voxels = 0
    last_key = -1
    for j in range(m):
        key = words[j] >> index_bits
        if key != last_key:
            num_voxels += 1
            last_key = key
    coords = np.empty((num_voxels, 4), np.int32)
    counts = np.zeros(num_voxels, np.int32)
    index_mask = (np.int64(1) << index_bits) - 1
    row = -1
    last_key = -1
    for j in range(m):
        word = words[j]
        key = word >> index_bits
        i = word & index_mask
        if key != last_key:
            row += 1
            last_key = key
            coords[row, 0] = batch_index[i] if batched else 0
            coords[row, 1] = _grid_index(points[i, 2], range_min[2], voxel_size[2])
            coords[row, 2] = _grid_index(points[i, 1], range_min[1], voxel_size[1])
            coords[row, 3] = _grid_index(points[i, 0], range_min[0], voxel_size[0])
        counts[row] += 1
        keys[i] = row
    return coords, counts, num_nonfinite


@njit(cache=True)
def add_batch_to_keys(keys, batch_index, cells_per_batch):
    """In place: keys += batch * cells_per_batch for valid keys (batch_index validated >= 0 by the caller)."""
    for i in range(keys.shape[0]):
        if keys[i] >= 0:
            keys[i] += batch_index[i] * cells_per_batch
