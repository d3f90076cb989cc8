"""Stable LSD radix argsort of non-negative int64 keys (numba), shared by voxelization and the window partitions.

Voxel and window keys span a small range (a few million values for a Waymo frame), so two or three counting
passes beat a comparison sort by a wide margin on the CPU.
"""
import numpy as np
from numba import njit

_RADIX_BITS = 11  # 2048 buckets: the count array stays in L1, and Waymo-size keys need 2 passes


@njit(cache=True)
def radix_argsort(keys):
    """Stable argsort of non-negative int64 `keys` (LSD radix, as many 11-bit passes as the largest key needs)."""
    n = keys.shape[0]
    largest = 0
    for i in range(n):
        if keys[i] > largest:
            largest = keys[i]
    bits = 1
    while bits < 63 and (np.int64(1) << bits) <= largest:
        bits += 1
    passes = (bits + _RADIX_BITS - 1) // _RADIX_BITS
    digit_bits = (bits + passes - 1) // passes
    mask = (np.int64(1) << digit_bits) - 1
    order = np.arange(n)
    sorted_keys = keys.copy()
    next_order = np.empty(n, np.int64)
    next_keys = np.empty(n, np.int64)
    counts = np.empty(mask + 1, np.int64)
    for p in range(passes):
        shift = p * digit_bits
        counts[:] = 0
        for i in range(n):
            counts[(sorted_keys[i] >> shift) & mask] += 1
        total = 0
        for d in range(mask + 1):
            c = counts[d]
            counts[d] = total
            total += c
        for i in range(n):
            k = sorted_keys[i]
            d = (k >> shift) & mask
            next_order[counts[d]] = order[i]
            next_keys[counts[d]] = k
            counts[d] += 1
        order, next_order = next_order, order
        sorted_keys, next_keys = next_keys, sorted_keys
    return order
