"""Voxelization speed: pc3d (numba, torch) vs spconv `PointToVoxel` (CPU), same run, same inputs.

    python benchmarks/bench_voxelize.py [--points FILE --dim N --json --repeat K] [--first-call]

Rows: hard and dynamic voxelization for a voxel and a pillar config per scan (KITTI configs for
4-column scans plus the dense nuScenes voxel config on them, nuScenes configs for 5-column scans, all
four for --points). Dynamic rows come in both orders (`dynamic_voxelize(order=...)`): "dynamic" =
sorted (the default, what the detectors use), "dynamic-first_come" = spconv's own order, no sort.
`identical` compares with spconv voxel for voxel (hard), point for point (sorted dynamic: same voxel of
every point, same voxel set), or row for row (first-come dynamic: same coords, same point -> row map).
Extra keys: `points_per_s`, and `bandwidth_bound_s` = bytes of the scan read / numpy.copy bandwidth,
with `of_bound` = bandwidth_bound_s / seconds (1.0 would be memory-bound).
Timings use `--threads` (default 1) torch and numba threads for every contender.
`--first-call` instead times import + first call in fresh processes with an empty and a warm
numba cache (NUMBA_CACHE_DIR in a temp dir).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, default_scans, report, time_call  # noqa: E402

CONFIGS = {
    "kitti_voxel": dict(voxel_size=[0.1, 0.1, 0.15], point_range=[0, -40, -3, 70.4, 40, 1], max_points=5, max_voxels=40000),
    "kitti_pillar": dict(voxel_size=[0.32, 0.32, 6], point_range=[-74.88, -74.88, -2, 74.88, 74.88, 4], max_points=32, max_voxels=40000),
    "nusc_voxel": dict(voxel_size=[0.075, 0.075, 0.2], point_range=[-54, -54, -5, 54, 54, 3], max_points=10, max_voxels=60000),
    "nusc_pillar": dict(voxel_size=[0.2, 0.2, 8], point_range=[-54, -54, -5, 54, 54, 3], max_points=20, max_voxels=30000),
}


def load_points(path: Path, dim: int | None) -> np.ndarray:
    try:
        from pc3d.io.points import read_points
        return read_points(path, dim=dim)
    except ImportError:
        return np.fromfile(path, dtype=np.float32).reshape(-1, dim or 4)


def copy_bandwidth() -> float:
    """Bytes per second numpy.copy moves for a 64 MB array (read side counted once)."""
    array = np.ones(16 * 2**20, np.float32)
    seconds = time_call(lambda: array.copy(), repeat=5)
    return array.nbytes / seconds


def hard_identical(ours, theirs) -> bool:
    return all(torch.equal(a, b) for a, b in zip(ours, theirs))


def dynamic_identical(ours, sp_coords, sp_point_voxel) -> bool:
    valid = sp_point_voxel >= 0
    if ours.coords.shape[0] != sp_coords.shape[0] or not torch.equal(valid, ours.point_voxel >= 0):
        return False
    if ours.order == "first_come":  # spconv's order: the very same rows
        return torch.equal(ours.coords[:, 1:], sp_coords) and torch.equal(ours.point_voxel, sp_point_voxel.long())
    return torch.equal(ours.coords[ours.point_voxel[valid], 1:], sp_coords[sp_point_voxel[valid]])


def run_scan(label: str, points: np.ndarray, config_names, args, bandwidth: float) -> None:
    from spconv.pytorch.utils import PointToVoxel
    from pc3d.ops.voxelize import dynamic_voxelize, hard_voxelize

    tensor = torch.from_numpy(points)
    bound = points.nbytes / bandwidth
    for name in config_names:
        cfg = CONFIGS[name]
        geometry = dict(voxel_size=cfg["voxel_size"], point_range=cfg["point_range"])
        spconv_hard = PointToVoxel(cfg["voxel_size"], cfg["point_range"], points.shape[1], cfg["max_voxels"], cfg["max_points"])
        reference = spconv_hard(tensor)
        spconv_seconds = time_call(lambda: spconv_hard(tensor), args.repeat)
        for backend in ("numba", "torch"):
            def call():
                return hard_voxelize(points, **geometry, max_points_per_voxel=cfg["max_points"], max_voxels=cfg["max_voxels"], backend=backend)
            same = hard_identical(call(), reference)
            seconds = time_call(call, args.repeat)
            report(f"hard {name} {label} pc3d-{backend}", seconds, "spconv", spconv_seconds, same, args.json,
                   points=len(points), voxels=int(reference[0].shape[0]), points_per_s=len(points) / seconds,
                   bandwidth_bound_s=bound, of_bound=bound / seconds)

        # spconv's dynamic equivalent: per-point voxel ids with no voxel cap (1 stored point per voxel)
        spconv_dynamic = PointToVoxel(cfg["voxel_size"], cfg["point_range"], points.shape[1], max(len(points), 1), 1)
        _, sp_coords, _, sp_point_voxel = spconv_dynamic.generate_voxel_with_id(tensor)
        spconv_seconds = time_call(lambda: spconv_dynamic.generate_voxel_with_id(tensor), args.repeat)
        for order, kind in (("sorted", "dynamic"), ("first_come", "dynamic-first_come")):
            for backend in ("numba", "torch"):
                def call():
                    return dynamic_voxelize(points, **geometry, backend=backend, order=order)
                same = dynamic_identical(call(), sp_coords, sp_point_voxel)
                seconds = time_call(call, args.repeat)
                report(f"{kind} {name} {label} pc3d-{backend}", seconds, "spconv", spconv_seconds, same, args.json,
                       points=len(points), voxels=int(sp_coords.shape[0]), points_per_s=len(points) / seconds,
                       bandwidth_bound_s=bound, of_bound=bound / seconds)
        del spconv_hard, spconv_dynamic


FIRST_CALL_SNIPPET = """
import time
t0 = time.perf_counter()
import numpy as np
from pc3d.ops.voxelize import hard_voxelize, dynamic_voxelize
t1 = time.perf_counter()
import pc3d.ops._voxelize_numba  # imports numba itself
t2 = time.perf_counter()
points = np.random.default_rng(0).uniform(-10, 10, size=(1000, 4)).astype(np.float32)
hard_voxelize(points, [0.2] * 3, [-10, -10, -10, 10, 10, 10], 5, 1000, backend="numba")
t3 = time.perf_counter()
dynamic_voxelize(points, [0.2] * 3, [-10, -10, -10, 10, 10, 10], backend="numba")
t4 = time.perf_counter()
hard_voxelize(points, [0.2] * 3, [-10, -10, -10, 10, 10, 10], 5, 1000, backend="numba")
t5 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
"""


def first_call(args) -> None:
    """First hard + dynamic call in fresh processes: numba cache empty (compile), then warm (load).

    `seconds` = first hard_voxelize + first dynamic_voxelize call (numba already imported);
    `numba_import_s` is reported apart (paid once by anything that uses numba).
    """
    with tempfile.TemporaryDirectory(prefix="pc3d_numba_cache_") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        for state in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", FIRST_CALL_SNIPPET], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            pc3d_import, numba_import, hard_first, dynamic_first, hard_second = map(float, out)
            report(f"first call numba cache {state}", hard_first + dynamic_first, None, None, None, args.json,
                   hard_first_s=hard_first, dynamic_first_s=dynamic_first, hard_second_call_s=hard_second,
                   numba_import_s=numba_import, pc3d_import_s=pc3d_import)


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--first-call", action="store_true", help="time the first call (numba compile / cache load)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and numba threads (default 1: on a shared machine a parallel region "
                             "stalls whenever one worker is preempted, which swamps ms-scale timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    if args.first_call:
        first_call(args)
        return
    bandwidth = copy_bandwidth()
    for label, path, dim in default_scans(args):
        points = np.ascontiguousarray(load_points(path, dim), dtype=np.float32)
        if args.points is not None:
            names = list(CONFIGS)
        else:
            # nuScenes' 0.075 m voxels on a KITTI scan: the densest grid (~0.6 voxels per point)
            names = ["kitti_voxel", "kitti_pillar", "nusc_voxel"] if points.shape[1] == 4 else ["nusc_voxel", "nusc_pillar"]
        run_scan(label, points, names, args, bandwidth)


if __name__ == "__main__":
    main()
