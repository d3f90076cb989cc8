"""Stable LSD radix argsort of non-negative int64 keys (numba), shared by voxelization and the window partitions.

Voxel and window keys span a small range (a few million values for a Waymo frame, ~80 M cells for a
nuScenes-size 0.075 m voxel grid), so two or three counting passes beat a comparison sort by a wide margin
on the CPU.
"""
import numpy as np
from numba import njit

# Digits of up to 14 bits: a 27-bit voxel key (1440 x 1440 x 40 grid) then takes 2 passes instead of 3, and
# the 16 K int32 counters (64 KB) still sit in L2. 11 / 12-bit digits measured 10-15% slower on such keys.
_RADIX_BITS = 14


@njit(cache=True, inline="always")
def _bit_length(value):
    bits = 1
    while bits < 63 and (np.int64(1) << bits) <= value:
        bits += 1
    return bits


@njit(cache=True, inline="always")
def _digit_layout(key_bits):
    """(passes, bits per pass, digit mask): the fewest passes of <= _RADIX_BITS bits, split evenly."""
    passes = (key_bits + _RADIX_BITS - 1) // _RADIX_BITS
    digit_bits = (key_bits + passes - 1) // passes
    return passes, digit_bits, (np.int64(1) << digit_bits) - 1


@njit(cache=True, inline="always")
def _radix_pass(source, target, shift, mask, counts):
    """One stable counting pass of `source` into `target` on digit `(word >> shift) & mask`."""
    counts[:] = 0
    for i in range(source.shape[0]):
        counts[(source[i] >> shift) & mask] += 1
    total = 0
    for d in range(mask + 1):
        c = counts[d]
        counts[d] = total
        total += c
    for i in range(source.shape[0]):
        word = source[i]
        d = (word >> shift) & mask
        target[counts[d]] = word
        counts[d] += 1


@njit(cache=True)
def radix_sort_packed(words, low_bit, key_bits):
    """Stable sort of non-negative int64 `words` on their bits [low_bit, low_bit + key_bits) (LSD radix).

    For words packed as `key << low_bit | payload`: the payload rides along in the same word, so a pass
    moves one int64 per item. `words` is used as scratch; returns the sorted array (a new array or `words`).
    """
    n = words.shape[0]
    passes, digit_bits, mask = _digit_layout(max(key_bits, 1))
    counts = np.empty(mask + 1, np.int64)
    spare = np.empty(n, np.int64)
    for p in range(passes):
        _radix_pass(words, spare, low_bit + p * digit_bits, mask, counts)
        words, spare = spare, words
    return words


@njit(cache=True)
def radix_argsort(keys):
    """Stable argsort of non-negative int64 `keys` (LSD radix, as many passes as the largest key needs).

    When key bits + index bits fit in 63 bits, each key is packed with its index into one int64 word
    (`key << index_bits | index`) and only the words move: half the memory traffic of moving keys and
    indices in two arrays (2x faster on 70 k voxel keys). Sorting on the key bits only, with stable
    passes, keeps equal keys in index order, so both layouts give the same (stable) result.
    """
    n = keys.shape[0]
    largest = 0
    for i in range(n):
        if keys[i] > largest:
            largest = keys[i]
    key_bits = _bit_length(largest)
    index_bits = _bit_length(max(n - 1, 0))
    if key_bits + index_bits <= 63:
        words = np.empty(n, np.int64)
        for i in range(n):
            words[i] = (keys[i] << index_bits) | i
        words = radix_sort_packed(words, index_bits, key_bits)
        index_mask = (np.int64(1) << index_bits) - 1
        order = np.empty(n, np.int64)
        for i in range(n):
            order[i] = words[i] & index_mask
        return order
    # Wide keys: move (key, index) pairs in two arrays.
    passes, digit_bits, mask = _digit_layout(key_bits)
    counts = np.empty(mask + 1, np.int64)
    order = np.arange(n)
    sorted_keys = keys.copy()
    next_order = np.empty(n, np.int64)
    next_keys = np.empty(n, np.int64)
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
