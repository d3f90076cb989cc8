"""Window partition ops: pc3d vs straightforward torch ports of each reference rule.

    python benchmarks/bench_partition.py [--points FILE --dim N --json --repeat K]

Inputs: the real scans (KITTI / nuScenes, or --points) pillarized on a Waymo-like 0.32 m grid
(468 x 468), and a synthetic Waymo-scale frame of ~25k pillars. References:
- DSVT sets: a per-window python loop applying DSVT's set rule (one partition), and DSVT's
  `get_set_single_shift` ported to torch (unique + bincount + its pure-torch in-window index
  fallback + a `win_num * max_voxel` scatter buffer; y and x sets of a shift computed together,
  as in DSVT), for the 4 partitions of a DSVT-P stage (2 window configurations x 2 axes).
- FlatFormer groups: FlatFormer's signed `(-1) ** parity` sort keys and per-sample python padding
  loop, all four orders.
- Scattered windows: `torch.unique(return_inverse, return_counts)` + argsort.
- SST regions: SST's in-window index by sort/bincount and a unique + dense buffer per drop level.
Every row checks that both sides give identical indices. pc3d runs its numba CPU kernels (the default
for CPU tensors); the rows ending in `,torch` time pc3d's exportable torch path (the GPU / ONNX one).
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, default_scans, report, time_call  # noqa: E402

from pc3d.ops.partition.flattened_windows import (ORDERS, flattened_window_groups,  # noqa: E402
                                                  flattened_window_groups_reference)
from pc3d.ops.partition.rotated_sets import (in_window_sort_key, rotated_set_pair, rotated_sets,  # noqa: E402
                                             rotated_sets_reference)
from pc3d.ops.partition.scattered_windows import scattered_windows  # noqa: E402
from pc3d.ops.partition.sst_regions import DEFAULT_DROP_LEVELS, sst_region_groups  # noqa: E402
from pc3d.ops.partition.windows import window_partition  # noqa: E402

GRID_RANGE = (-74.88, -74.88, -2.0, 74.88, 74.88, 4.0)
PILLAR = (0.32, 0.32, 6.0)
SHAPE = (1, 468, 468)
WINDOW, HYBRID, SHIFT, SET_SIZE = (12, 12, 1), (24, 24, 1), (6, 6, 0), 36


# ---------------------------------------------------------------- inputs
def pillarize(points: np.ndarray) -> torch.Tensor:
    from pc3d.ops.voxelize import dynamic_voxelize
    return dynamic_voxelize(torch.from_numpy(np.ascontiguousarray(points[:, :4])), PILLAR, GRID_RANGE).coords


def synthetic_waymo_pillars(num: int = 25000, seed: int = 0) -> torch.Tensor:
    """~num unique pillars with a LiDAR-like density (dense near the sensor, sparse far away)."""
    rng = np.random.default_rng(seed)
    r = 2.0 + rng.exponential(18.0, size=num * 3)
    a = rng.uniform(-np.pi, np.pi, size=num * 3)
    x = ((r * np.cos(a) + 74.88) / 0.32).astype(np.int64)
    y = ((r * np.sin(a) + 74.88) / 0.32).astype(np.int64)
    ok = (x >= 0) & (x < SHAPE[2]) & (y >= 0) & (y < SHAPE[1])
    lin = np.unique(y[ok] * SHAPE[2] + x[ok])
    lin = rng.permutation(lin)[:num]
    lin.sort()
    zeros = np.zeros_like(lin)
    return torch.from_numpy(np.stack([zeros, zeros, lin // SHAPE[2], lin % SHAPE[2]], 1)).int()


# ---------------------------------------------------------------- reference ports
def _inner_index_by_sort(group: torch.Tensor) -> torch.Tensor:
    """DSVT / SST pure-torch in-group index (order of appearance): sort, bincount, cumsum template."""
    sorted_group, order = torch.sort(group, stable=True)
    counts = torch.bincount(group)
    starts = torch.cumsum(counts, 0) - counts
    inner_sorted = torch.arange(group.shape[0]) - starts[sorted_group]
    inner = torch.empty_like(group)
    inner[order] = inner_sorted
    return inner


def dsvt_sets_port(coords, window, set_size, shift):
    """(y sets, x sets) of one window configuration, computed together as DSVT's get_set_single_shift does."""
    part = window_partition(coords, SHAPE, window, shift)
    max_voxel = window[0] * window[1] * window[2]
    contiguous = torch.unique(part.window_id, return_inverse=True)[1]
    per_win = torch.bincount(contiguous)
    n_sets = torch.ceil(per_win / set_size).long()
    set_win = torch.repeat_interleave(torch.arange(per_win.shape[0]), n_sets)
    set_in_win = torch.arange(set_win.shape[0]) - (torch.cumsum(n_sets, 0) - n_sets)[set_win]
    base = set_in_win[:, None] * set_size + torch.arange(set_size)[None]
    select = torch.floor(base.double() * per_win[set_win][:, None] / (n_sets[set_win] * set_size)[:, None].double())
    select = select.long() + set_win[:, None] * max_voxel
    inner = _inner_index_by_sort(contiguous)
    _, order1 = torch.sort(contiguous * max_voxel + inner)
    out = []
    for axis in ("y", "x"):
        _, order2 = torch.sort(contiguous * max_voxel + in_window_sort_key(part.coords_in_window, window, axis))
        inner_axis = torch.full_like(inner, -1).scatter(0, order2, inner[order1])
        buffer = torch.full((per_win.shape[0] * max_voxel,), -1, dtype=torch.long)
        buffer[inner_axis + max_voxel * contiguous] = torch.arange(coords.shape[0])
        out.append(buffer[select])
    return out


def scattered_port(coords):
    part = window_partition(coords, SHAPE, WINDOW, SHIFT)
    _, inverse, counts = torch.unique(part.window_id, return_inverse=True, return_counts=True)
    key = inverse * (WINDOW[0] * WINDOW[1]) + in_window_sort_key(part.coords_in_window, WINDOW, "x")
    order = torch.argsort(key)
    return order, torch.cumsum(counts, 0) - counts, counts


def sst_port(coords, levels=DEFAULT_DROP_LEVELS):
    part = window_partition(coords, SHAPE, WINDOW, SHIFT)
    _, contiguous, counts = torch.unique(part.window_id, return_inverse=True, return_counts=True)
    inner = _inner_index_by_sort(contiguous)
    num = counts[contiguous]
    target = torch.zeros_like(num)
    level_of = torch.full_like(num, -1)
    for index, (max_tokens, lower, upper) in enumerate(levels):
        hit = (num >= lower) & (num < upper)
        target[hit] = max_tokens
        level_of[hit] = index
    keep = inner < target
    dense = []
    for index, (max_tokens, _, _) in enumerate(levels):
        rows = torch.nonzero(keep & (level_of == index)).reshape(-1)
        win_l, inv = torch.unique(part.window_id[rows], return_inverse=True)
        buf = torch.full((win_l.shape[0], max_tokens), -1, dtype=torch.long)
        buf[inv, inner[rows]] = rows
        dense.append(buf)
    return keep, dense


# ---------------------------------------------------------------- pc3d calls
def pc3d_sets(coords, backend="auto"):
    return [sets.voxel_index for w, s in ((WINDOW, (0, 0, 0)), (HYBRID, SHIFT))
            for sets in rotated_set_pair(coords, SHAPE, w, SET_SIZE, s, backend=backend)]


def port_sets(coords):
    return [sets for w, s in ((WINDOW, (0, 0, 0)), (HYBRID, SHIFT)) for sets in dsvt_sets_port(coords, w, SET_SIZE, s)]


def pc3d_one_set(coords, backend="auto"):
    return rotated_sets(coords, SHAPE, WINDOW, SET_SIZE, "x", backend=backend).voxel_index


def loop_one_set(coords):
    return torch.tensor(rotated_sets_reference(coords, SHAPE, WINDOW, SET_SIZE, "x"), dtype=torch.long)


def pc3d_groups(coords, backend="auto"):
    return [flattened_window_groups(coords, SHAPE, (12, 12), 69, o[0], o.endswith("shift"), backend=backend).voxel_index
            for o in ORDERS]


def port_groups(coords):
    return [flattened_window_groups_reference(coords, SHAPE, (12, 12), 69, o[0], o.endswith("shift")) for o in ORDERS]


def pc3d_scatter(coords, backend="auto"):
    s = scattered_windows(coords, SHAPE, WINDOW, SHIFT, backend=backend)
    return s.order, s.offsets, s.counts


def pc3d_sst(coords, backend="auto"):
    r = sst_region_groups(coords, SHAPE, WINDOW, SHIFT, backend=backend)
    return r.keep_mask, [torch.where(level.key_padding_mask, -1, level.voxel_index) for level in r.levels]


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def main(argv=None):
    parser = benchmark_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the box is shared: one thread gives stable best-of timings
    from pc3d.io.points import read_points
    frames = []
    for label, path, dim in default_scans(args):
        frames.append((label, pillarize(read_points(path, dim=dim))))
    if args.points is None:
        frames.append(("synthetic_waymo_25k", synthetic_waymo_pillars()))
    cases = [("dsvt_rotated_sets(1 partition)", pc3d_one_set, "dsvt_per_window_python_loop", loop_one_set),
             ("dsvt_rotated_sets(4 partitions)", pc3d_sets, "dsvt_get_set_torch_port", port_sets),
             ("flatformer_groups(4 orders)", pc3d_groups, "flatformer_argsort_loop", port_groups),
             ("scattered_windows", pc3d_scatter, "unique_argsort", scattered_port),
             ("sst_regions", pc3d_sst, "sst_unique_dense_port", sst_port)]
    cases += [(f"{name[:-1]},torch)" if name.endswith(")") else f"{name}(torch)", partial(fn, backend="torch"), ref_name,
               ref_fn) for name, fn, ref_name, ref_fn in cases if ref_fn is not loop_one_set]
    for label, coords in frames:
        for name, fn, ref_name, ref_fn in cases:
            identical = _same(fn(coords), ref_fn(coords))
            seconds = time_call(lambda: fn(coords), args.repeat)
            slow_reference = ref_fn is loop_one_set  # seconds per call: one timed run is enough
            ref_seconds = time_call(lambda: ref_fn(coords), 1 if slow_reference else args.repeat,
                                    warmup=0 if slow_reference else 1)
            report(f"{name}[{label}]", seconds, ref_name, ref_seconds, identical, args.json,
                   voxels=int(coords.shape[0]))


if __name__ == "__main__":
    main()
