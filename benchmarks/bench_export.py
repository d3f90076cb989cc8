"""Torch eager vs onnxruntime (CPU) for an exported detector, on the real KITTI scan and a Waymo-scale frame.

    python benchmarks/bench_export.py [--points FILE --dim N] [--json] [--config CFG ...] [--threads T]
                                      [--scatter scatternd|elements] [--optimization all|extended|basic|disable]
                                      [--profile]

One export per config (random weights, seed 0), then for every scan: the network on the same voxelized
inputs in torch eager (`Detector.forward_voxels`, no_grad) and in onnxruntime (`OnnxDetector.run_feed`),
best of `--repeat`. name = onnxruntime, reference = torch eager, ratio = torch / onnxruntime,
identical = max_abs_diff of the head outputs <= 1e-4. Scans: the `--points` scan, else the real KITTI scan
(when present) and a Waymo-scale synthetic frame (`simulate_frame(0)` with the waymo64 preset).
`--profile` adds onnxruntime's per-op-type time shares (`ort_top_ops`) and torch's (`torch_top_ops`).
NUMBA_THREADING_LAYER defaults to workqueue here (see below: numba's spinning OpenMP threads distort torch).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# numba's OpenMP threading layer leaves its worker threads spinning after a parallel kernel (the synthetic
# frame's ray caster), which made every later torch eager op ~20x slower on the 2-core machine (0.1 s -> 2 s
# for FlatFormer on KITTI); the workqueue layer does not spin. Must be set before numba is imported.
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import KITTI_SCAN, REPO_ROOT, benchmark_parser, report, time_call  # noqa: E402

DEFAULT_CONFIGS = ("configs/synthetic/dsvt_pillar_tiny.yaml", "configs/synthetic/flatformer_tiny.yaml")


def scans(args, width: int):
    from pc3d.data.synthetic import LidarConfig, simulate_frame
    from pc3d.io.points import read_points

    if args.points is not None:
        return [(args.points.name, read_points(args.points, dim=args.dim)[:, :width])]
    out = []
    if KITTI_SCAN.exists():
        out.append(("kitti_000001", read_points(KITTI_SCAN, dim=4)[:, :width]))
    waymo = simulate_frame(0, lidar_config=LidarConfig.preset("waymo64")).points.points.numpy()
    out.append(("synthetic_waymo64", waymo[:, :width]))
    return out


def ort_top_ops(profile_file: str, top: int = 6) -> dict[str, float]:
    """Share of onnxruntime's node time per op type (from a profiling JSON)."""
    events = json.loads(Path(profile_file).read_text())
    per_op = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event.get("args", {}).get("op_name", "?")] += float(event.get("dur", 0))
    total = sum(per_op.values()) or 1.0
    return {op: round(t / total, 3) for op, t in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]}


def torch_top_ops(fn, top: int = 6) -> dict[str, float]:
    """Share of torch's self CPU time per aten op for one call of `fn`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in rows) or 1.0
    return {k: round(t / total, 3) for k, t in sorted(rows, key=lambda kv: -kv[1])[:top]}


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=None, help="detection config(s) to export")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and onnxruntime intra-op threads (default 1: the machine has 2 shared cores and "
                             "multi-threaded timings are dominated by other processes; scatternd needs 1)")
    parser.add_argument("--scatter", choices=("elements", "scatternd"), default="scatternd",
                        help="export mode of the segment reductions (see pc3d.deploy.onnx_export.export_onnx)")
    parser.add_argument("--optimization", default="all", help="onnxruntime graph optimisation level")
    parser.add_argument("--profile", action="store_true", help="report the top op types of both runtimes")
    args = parser.parse_args(argv)
    import warnings
    warnings.filterwarnings("ignore")

    from pc3d.config import load_config
    from pc3d.deploy import OnnxDetector, export_onnx
    from pc3d.models.build import build_model
    from pc3d.structures import Frame, PointCloud, collate

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench_export_"))
    for config in args.config or DEFAULT_CONFIGS:
        torch.manual_seed(0)
        cfg = load_config(str(REPO_ROOT / config) if not Path(config).is_file() else config, [])
        detector = build_model(cfg).eval()
        onnx_path = workdir / (Path(config).stem + ".onnx")
        exported = export_onnx(detector, cfg, onnx_path, scatter=args.scatter)
        prefix = str(workdir / (Path(config).stem + "_ort")) if args.profile else None
        runtime = OnnxDetector(onnx_path, intra_op_threads=args.threads, optimization=args.optimization,
                               profile_prefix=prefix)
        features = tuple(detector.point_features)
        for label, scan in scans(args, len(features)):
            batch = collate([Frame(PointCloud(torch.as_tensor(scan), features))])
            with torch.no_grad():
                voxelized = detector.voxelize(batch)
                feed = runtime.frame_inputs(batch)[0]
                run_torch = lambda: detector.forward_voxels(voxelized)  # noqa: E731
                run_ort = lambda: runtime.run_feed(feed)  # noqa: E731
                torch_seconds = time_call(run_torch, args.repeat)
                ort_seconds = time_call(run_ort, args.repeat)
                reference = [t.numpy() for p in run_torch() for t in p.tensors()]
                diff = max(float(np.abs(a - b).max()) for a, b in zip(reference, run_ort()))
                extra = {"config": Path(config).stem, "scan": label, "num_points": int(scan.shape[0]),
                         "num_voxels": int(voxelized.num_voxels), "max_abs_diff": diff,
                         "export_seconds": round(exported.seconds, 1), "threads": args.threads or "default",
                         "optimization": args.optimization, "scatter": args.scatter}
                if args.profile:
                    extra["torch_top_ops"] = torch_top_ops(run_torch)
            report(f"onnxruntime {Path(config).stem} {label}", ort_seconds, "torch eager", torch_seconds,
                   diff <= 1e-4, args.json, **extra)
        if args.profile:
            profile_file = runtime.session.end_profiling()
            row = {"name": f"onnxruntime profile {Path(config).stem}", "ort_top_ops": ort_top_ops(profile_file)}
            print(json.dumps(row) if args.json else f"{row['name']}: {row['ort_top_ops']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
