"""Export a detector to ONNX (and optionally build a TensorRT engine), and check it against torch.

    python tools/export.py CONFIG [CKPT] --format onnx [--out FILE] [--check-points FILE [--dim N]] [--json]
    python tools/export.py CONFIG [CKPT] --format tensorrt [--out FILE.plan] [--fp16]
           [--profile-frames N] [--profile-source synthetic|dataset] [--split val] [--lidar waymo64]

Without CKPT the network has random weights (as in tools/infer.py). The graph runs from voxelized points
(in-range points, point->voxel map, voxel coordinates) through the head outputs, with the partitioning
(rotated sets / flattened windows) inside and dynamic `num_points` / `num_voxels` axes; voxelization and
box decoding (NMS) stay outside (see `pc3d.deploy.onnx_export`). The spconv baseline (`spconv_resnet`)
cannot be exported and is refused with the reason.

`--check-points FILE`: runs torch and onnxruntime on that scan and prints the max absolute difference of
the head outputs and both network latencies (`--json`: one object with `max_abs_diff`, `torch_seconds`,
`onnxruntime_seconds`, `max_box_diff`, `num_points`, `num_voxels`, ...).
`--format tensorrt`: exports the ONNX file (`--out` with suffix .onnx), scans `--profile-frames` frames for
the optimisation profile (min/opt/max of every dynamic axis), writes it as JSON and builds the engine
(needs TensorRT + CUDA; without them the command stops after writing the profile and prints the rest, exit
code 3).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pc3d.cli.errors import UserError, input_file, positive, run_cli


def check_opset(opset: int) -> int:
    """The opsets torch's dynamo exporter really writes: MIN_OPSET..MAX_OPSET (asking for an older one used to
    give an opset-18 file silently)."""
    from pc3d.deploy.onnx_export import MAX_OPSET, MIN_OPSET

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset {opset}: the exporter writes opsets {MIN_OPSET} to {MAX_OPSET} only"
                        + (" (older opsets cannot be produced by torch.onnx's dynamo exporter)" if opset < MIN_OPSET else ""))
    return opset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="export.py", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="detection config (YAML)")
    parser.add_argument("checkpoint", nargs="?", default=None, help="checkpoint (optional; random weights without)")
    parser.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    parser.add_argument("--out", default=None, help="output file (default: <config stem>.onnx / .plan)")
    parser.add_argument("--opset", type=int, default=18,
                        help="ONNX opset of the written model: 18 (default) or newer, up to MAX_OPSET; the exporter "
                             "cannot write older opsets, so they are refused")
    parser.add_argument("--scatter", choices=("elements", "scatternd"), default="elements",
                        help="how the VFE's segment reductions export: ScatterElements (any thread count) or "
                             "ScatterND (much faster in onnxruntime, single-threaded only)")
    parser.add_argument("--example-points", default=None, help="scan used to trace the export (default: random)")
    parser.add_argument("--check-points", default=None, help="scan to compare torch and onnxruntime on")
    parser.add_argument("--dim", type=int, default=None, help="float32 columns of a .bin scan (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs for --check-points (best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.head.decode.score_threshold=0.3")
    trt = parser.add_argument_group("tensorrt")
    trt.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    trt.add_argument("--workspace-mb", type=int, default=1024)
    trt.add_argument("--profile-frames", type=int, default=16, help="frames scanned for the optimisation profile")
    trt.add_argument("--profile-source", choices=("synthetic", "dataset"), default="synthetic")
    trt.add_argument("--split", default="val", help="dataset split for --profile-source dataset")
    trt.add_argument("--data-root", default=None, help="dataset root override for --profile-source dataset")
    trt.add_argument("--lidar", default="waymo64", help="LidarConfig preset for --profile-source synthetic")
    return parser.parse_args(argv)


def _scan_columns(path, dim, features):
    from pc3d.io.points import read_points

    scan = read_points(input_file(path, "point"), dim=dim)
    if scan.ndim != 2 or scan.shape[1] < len(features):
        raise ValueError(f"{path}: the config reads {len(features)} point features {features} but the scan has "
                         f"{scan.shape[1] if scan.ndim == 2 else scan.shape} column(s); pass --dim if it is a .bin")
    return scan[:, :len(features)]


def check_against_torch(detector, onnx_path, scan, repeat: int = 3, threads: int | None = None) -> dict:
    """Torch eager vs onnxruntime on one scan `(N, C)`: head-output max abs diff, decoded-box diff, latencies
    of the network (same voxelized inputs; best of `repeat`)."""
    import numpy as np
    import torch

    from pc3d.deploy.onnx_runtime import OnnxDetector
    from pc3d.structures import Frame, PointCloud, collate

    from pc3d.deploy.onnx_runtime import requires_single_thread

    layout = OnnxDetector(onnx_path, create_session=False).layout
    ort_detector = OnnxDetector(onnx_path, intra_op_threads=1 if requires_single_thread(layout) else threads)
    batch = collate([Frame(PointCloud(torch.as_tensor(scan), tuple(detector.point_features)))])
    detector.eval()
    with torch.no_grad():
        voxelized = detector.voxelize(batch)
        feed = ort_detector.frame_inputs(batch)[0]

        def run_torch():
            return detector.forward_voxels(voxelized)

        def run_ort():
            return ort_detector.run_feed(feed)

        torch_seconds, torch_out = _best_of(run_torch, repeat)
        ort_seconds, ort_out = _best_of(run_ort, repeat)
        torch_tensors = [t.numpy() for p in torch_out for t in p.tensors()]
        max_abs_diff = max(float(np.abs(a - b).max()) for a, b in zip(torch_tensors, ort_out))
        torch_boxes = ort_detector.decode(torch_out, voxelized)[0]
        ort_boxes = ort_detector.decode(ort_detector.predictions([ort_out]), ort_detector.batch_voxels([feed]))[0]
    return {"max_abs_diff": max_abs_diff, "torch_seconds": torch_seconds, "onnxruntime_seconds": ort_seconds,
            "onnxruntime_threads": ort_detector.intra_op_threads or "default", "torch_threads": torch.get_num_threads(),
            "ratio": torch_seconds / ort_seconds if ort_seconds > 0 else None,
            "num_points": int(scan.shape[0]), "num_voxels": int(voxelized.num_voxels),
            "num_boxes_torch": len(torch_boxes), "num_boxes_onnxruntime": len(ort_boxes),
            "max_box_diff": boxes_max_diff(torch_boxes, ort_boxes)}


def _best_of(fn, repeat: int):
    result = fn()  # warm-up (onnxruntime allocates its arena, torch its caches)
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def boxes_max_diff(a, b) -> float:
    """Largest difference between two detections (boxes, scores): each box of `a` is matched to the nearest
    box of `b` with the same label (inf when the counts or labels differ). Order-free, so near-equal scores
    ranked differently still compare equal."""
    import torch

    if len(a) != len(b):
        return float("inf")
    if len(a) == 0:
        return 0.0
    rows_a = torch.cat([a.boxes, a.scores[:, None]], 1).double()
    rows_b = torch.cat([b.boxes, b.scores[:, None]], 1).double()
    diff = (rows_a[:, None, :] - rows_b[None, :, :]).abs().amax(-1)
    diff = torch.where(a.labels[:, None] == b.labels[None, :], diff, torch.full_like(diff, float("inf")))
    return float(max(diff.amin(1).max(), diff.amin(0).max()))


def run(args) -> dict:
    import torch

    from pc3d.config import load_config, require_sections
    from pc3d.deploy.onnx_export import check_exportable, export_onnx
    from pc3d.models.build import build_model, load_weights

    check_opset(args.opset)
    if args.threads is not None:
        torch.set_num_threads(positive(args.threads, "--threads"))
    cfg = require_sections(load_config(args.config, args.overrides), ("dataset", "model"))
    check_exportable(cfg)  # before building: the spconv baseline is refused with the reason
    features = list(cfg["dataset"]["point_features"])
    detector = build_model(cfg)
    if args.checkpoint:
        load_weights(detector, args.checkpoint)
    detector.eval()
    default_suffix = ".plan" if args.format == "tensorrt" else ".onnx"
    out = Path(args.out) if args.out else Path(Path(args.config).stem + default_suffix)
    onnx_path = out if args.format == "onnx" else out.with_suffix(".onnx")
    example = None
    if args.example_points:
        example = torch.as_tensor(_scan_columns(args.example_points, args.dim, features))
    exported = export_onnx(detector, cfg, onnx_path, example_points=example, opset=args.opset, scatter=args.scatter)
    result = {"config": str(args.config), "checkpoint": args.checkpoint, "format": args.format,
              "onnx": str(onnx_path), "export_seconds": exported.seconds, "num_nodes": exported.num_nodes,
              "inputs": exported.input_names, "outputs": exported.output_names,
              "dynamic_axes": exported.metadata["dynamic_axes"], "onnx_checker": "passed"}
    if args.check_points:
        scan = _scan_columns(args.check_points, args.dim, features)
        result.update(check_against_torch(detector, onnx_path, scan, args.repeat, args.threads))
        result["check_points"] = str(args.check_points)
    if args.format == "tensorrt":
        result.update(_tensorrt(args, cfg, detector, onnx_path, out, exported.metadata))
    return result


def _tensorrt(args, cfg, detector, onnx_path: Path, engine_path: Path, layout: dict) -> dict:
    from pc3d.deploy import profile_stats
    from pc3d.deploy.tensorrt_engine import TensorRTUnavailable, build_engine, risky_tensorrt_ops

    if args.profile_source == "dataset":
        frames = profile_stats.dataset_frames(cfg, args.split, args.profile_frames, root=args.data_root)
    else:
        frames = profile_stats.synthetic_frames(args.profile_frames, args.lidar)
    stats = profile_stats.collect_axis_stats(detector, frames)
    profile = profile_stats.optimization_profile(stats, layout)
    profile_path = engine_path.with_name(engine_path.name + ".profile.json")
    profile_path.parent.mkdir(parents=True, exist_ok=True)
    profile_path.write_text(json.dumps({k: [list(s) for s in v] for k, v in profile.items()}, indent=1) + "\n")
    info = {"axis_stats": profile_stats.summarize(stats), "profile": {k: [list(s) for s in v] for k, v in profile.items()},
            "profile_file": str(profile_path), "tensorrt_restricted_ops": risky_tensorrt_ops(onnx_path)}
    try:
        build_engine(onnx_path, engine_path, profile, fp16=args.fp16, workspace_bytes=args.workspace_mb << 20)
    except TensorRTUnavailable as err:
        info.update(engine=None, tensorrt_error=str(err))
        return info
    info["engine"] = str(engine_path)
    return info


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    from pc3d.deploy.onnx_export import ExportError

    args = parse_args(argv)
    try:
        result = run(args)
    except ExportError as err:  # a config the exporter cannot handle (the spconv baseline): the user's choice
        raise UserError(str(err)) from None
    if args.json:
        print(json.dumps(result))
    else:
        print(f"exported {result['onnx']} ({result['num_nodes']} nodes, {result['export_seconds']:.1f} s, "
              f"inputs {result['inputs']}, dynamic axes {result['dynamic_axes']}); onnx.checker passed")
        if "max_abs_diff" in result:
            print(f"check on {result['check_points']} ({result['num_points']} points, {result['num_voxels']} voxels): "
                  f"max_abs_diff {result['max_abs_diff']:.3g}, torch {result['torch_seconds'] * 1e3:.1f} ms, "
                  f"onnxruntime {result['onnxruntime_seconds'] * 1e3:.1f} ms, boxes {result['num_boxes_torch']} / "
                  f"{result['num_boxes_onnxruntime']} (max box diff {result['max_box_diff']:.3g})")
        if result.get("engine"):
            print(f"TensorRT engine {result['engine']} (profile {result['profile_file']})")
    if result.get("tensorrt_error"):
        print(f"export: ONNX file and optimisation profile ({result['profile_file']}) written, but the TensorRT "
              f"engine was not built: {result['tensorrt_error']}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
