"""Run a detector on one scan and write the boxes as JSON.

    python tools/infer.py CONFIG [CKPT] --points FILE [--dim N] --out boxes.json [--json] [--set key=value ...]

Without CKPT the network has random weights (useful to check a config end to end). The config's
`dataset.point_features` decide how many columns are used (the scan's first columns, in that order).
Output: `{"boxes": [{"box": [x, y, z, dx, dy, dz, heading], "label": ..., "score": ...}], "config": ...,
"checkpoint": ..., "num_points": ..., "seconds": ...}`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="detection config (YAML)")
    parser.add_argument("checkpoint", nargs="?", default=None, help="checkpoint with key 'model' (optional)")
    parser.add_argument("--points", required=True, help="scan: .bin / .npy / .ply / .pcd / .pth")
    parser.add_argument("--dim", type=int, default=None, help="columns of a .bin scan (default 4)")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.head.decode.score_threshold=0.3")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def run(args) -> dict:
    from pc3d.config import load_config
    from pc3d.io.points import read_points
    from pc3d.models.detector import Detector, load_checkpoint
    from pc3d.structures import Frame, PointCloud, collate

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    features = list(cfg["dataset"]["point_features"])
    scan = read_points(args.points, dim=args.dim)
    if scan.ndim != 2 or scan.shape[1] < len(features):
        raise ValueError(f"{args.points}: the config reads {len(features)} point features {features} but the scan "
                         f"has {scan.shape[1] if scan.ndim == 2 else scan.shape} column(s); pass --dim if it is a .bin")
    model = Detector.from_config(cfg)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    model.eval()
    batch = collate([Frame(PointCloud(scan[:, :len(features)], tuple(features)), frame_id=str(args.points))])
    start = time.perf_counter()
    with torch.no_grad():
        boxes = model(batch)[0]
    seconds = time.perf_counter() - start
    return {"boxes": boxes.to_json(), "config": str(args.config), "checkpoint": args.checkpoint,
            "points_file": str(args.points), "num_points": int(scan.shape[0]), "seconds": seconds}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"infer: error: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{len(result['boxes'])} boxes from {result['num_points']} points in {result['seconds']:.3f} s"
              + (f" -> {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
