"""Shared benchmark plumbing: `--points FILE --dim N --json --repeat K`, timing and the report line.

A report is one line: human-readable by default, or with `--json` one JSON object
`{"name", "seconds", "reference", "reference_seconds", "ratio", "identical", ...}` where
`ratio = reference_seconds / seconds` (> 1 means pc3d is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# PC3D_SHARED_DATA as in tests/conftest.py (the GPU machine gets a carried copy, see docs/gpu.md)
SHARED_DATA = Path(os.environ.get("PC3D_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
KITTI_SCAN = SHARED_DATA / "kitti/object/training/velodyne/000001.bin"
NUSCENES_SCAN = SHARED_DATA / ("nuscenes/mmdet3d_demo/samples/LIDAR_TOP/"
                               "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin")


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--points", type=Path, help="scan to use instead of the default ones (any format read_points knows)")
    parser.add_argument("--dim", type=int, default=None, help="float32 columns of a .bin scan (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions; the best is reported")
    return parser


def time_call(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Best wall time of `repeat` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def report(name: str, seconds: float, reference: str | None, reference_seconds: float | None,
           identical: bool | None, json_mode: bool, **extra) -> dict:
    ratio = (reference_seconds / seconds) if (reference_seconds is not None and seconds) else None
    row = {"name": name, "seconds": seconds, "reference": reference, "reference_seconds": reference_seconds,
           "ratio": ratio, "identical": identical, **extra}
    if json_mode:
        print(json.dumps(row), flush=True)
    else:
        ref = f"  {reference}: {reference_seconds * 1e3:9.2f} ms  ratio {ratio:6.2f}x" if ratio is not None else ""
        same = "" if identical is None else f"  identical={identical}"
        more = "".join(f"  {k}={v:.4g}" if isinstance(v, float) else f"  {k}={v}" for k, v in extra.items())
        took = "      n/a" if seconds is None else f"{seconds * 1e3:9.2f}"  # a row that could not run
        print(f"{name:48s} {took} ms{ref}{same}{more}", flush=True)
    return row


def default_scans(args) -> list[tuple[str, Path, int | None]]:
    """`[(label, path, dim)]`: the --points scan, or the real KITTI and nuScenes scans when present."""
    if args.points is not None:
        return [(args.points.name, args.points, args.dim)]
    scans = [(p.name, p, d) for p, d in ((KITTI_SCAN, 4), (NUSCENES_SCAN, 5)) if p.exists()]
    if not scans:
        raise SystemExit(f"no default scans under {SHARED_DATA}; pass --points FILE")
    return scans
