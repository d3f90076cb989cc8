"""Run a detector on one scan and write the boxes as JSON.

    python tools/infer.py CONFIG [CKPT] --points FILE [--dim N] --out boxes.json [--json] [--set key=value ...]
                          [--score-threshold S] [--intensity-max V]

Without CKPT (or with `--random-weights`) the network is untrained: useful to check a config end to end; it
says so loudly on stderr and marks the output (`"random_weights": true`). The config's
`dataset.point_features` decide how many columns are used (the scan's first columns, in that order).
`--score-threshold` keeps boxes scoring at least that (default: the config's
`model.head.decode.score_threshold`, the threshold the demo uses too). `--intensity-max V`: the scan's intensity range
(255 for a nuScenes sweep), rescaled to the config's `dataset.intensity_max`.
Output: `{"boxes": [{"box": [x, y, z, dx, dy, dz, heading], "label": ..., "score": ...}], "config": ...,
"checkpoint": ..., "random_weights": ..., "score_threshold": ..., "num_points": ..., "seconds": ...}`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pc3d.cli.common import config_score_threshold, scale_intensity
from pc3d.cli.errors import UserError, input_file, positive, run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="detection config (YAML)")
    parser.add_argument("checkpoint", nargs="?", default=None, help="checkpoint (without: --random-weights)")
    parser.add_argument("--random-weights", action="store_true",
                        help="run an untrained network (no checkpoint): output is marked random_weights")
    parser.add_argument("--score-threshold", type=float, default=None,
                        help="keep boxes scoring at least this (default: model.head.decode.score_threshold, as the demo)")
    parser.add_argument("--intensity-max", type=float, default=None,
                        help="the scan's intensity range (e.g. 255 for nuScenes), rescaled to dataset.intensity_max")
    parser.add_argument("--points", required=True, help="scan: .bin / .npy / .ply / .pcd / .pth")
    parser.add_argument("--dim", type=int, default=None, help="columns of a .bin scan (default 4)")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.head.decode.score_threshold=0.3")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args(argv)


def run(args) -> dict:
    from pc3d.config import apply_override, load_config, require_sections
    from pc3d.io.points import read_points
    from pc3d.models.detector import Detector, load_checkpoint
    from pc3d.structures import Frame, PointCloud, collate

    if args.checkpoint is not None and args.random_weights:
        raise UserError("--random-weights: given together with a checkpoint; pass one or the other")
    if args.score_threshold is not None and not 0.0 <= args.score_threshold <= 1.0:  # also refuses NaN
        raise UserError(f"--score-threshold: must be in [0, 1], got {args.score_threshold}")
    if args.threads is not None:
        torch.set_num_threads(positive(args.threads, "--threads"))
    cfg = require_sections(load_config(args.config, args.overrides), ("dataset", "model"))
    threshold = config_score_threshold(cfg) if args.score_threshold is None else args.score_threshold
    if threshold < config_score_threshold(cfg):  # decode drops boxes below its own threshold: lower it first
        apply_override(cfg, f"model.head.decode.score_threshold={threshold}", str(args.config))
    features = list(cfg["dataset"]["point_features"])
    scan = read_points(input_file(args.points, "point"), dim=args.dim)
    if scan.ndim != 2 or scan.shape[1] < len(features):
        raise ValueError(f"{args.points}: the config reads {len(features)} point features {features} but the scan "
                         f"has {scan.shape[1] if scan.ndim == 2 else scan.shape} column(s); pass --dim if it is a .bin")
    scan = scale_intensity(scan[:, :len(features)], features, cfg, args.intensity_max, str(args.points))
    model = Detector.from_config(cfg)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    else:
        print("WARNING: no checkpoint: the network has RANDOM, UNTRAINED weights; its boxes are noise (the output "
              'is marked "random_weights": true)', file=sys.stderr)
    model.eval()
    batch = collate([Frame(PointCloud(scan, tuple(features)), frame_id=str(args.points))])
    start = time.perf_counter()
    with torch.no_grad():
        boxes = model(batch)[0]
    seconds = time.perf_counter() - start
    if boxes.scores is not None:
        boxes = boxes[boxes.scores >= threshold]
    return {"boxes": boxes.to_json(), "config": str(args.config), "checkpoint": args.checkpoint,
            "random_weights": args.checkpoint is None, "score_threshold": threshold,
            "points_file": str(args.points), "num_points": int(scan.shape[0]), "seconds": seconds}


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
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
