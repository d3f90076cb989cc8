#!/usr/bin/env python
"""Render a scan with ground-truth and predicted boxes to PNG (headless), or show it in a window.

Examples:
    python tools/visualize.py --points scan.bin --boxes pred.json --gt-boxes gt.json --out scan.png
    python tools/visualize.py --points sweep.pcd.bin --dim 5 --view chase --color-by intensity --out a.png
    python tools/visualize.py --frame-info data/val_infos.json --index 3 --view overview --out f3.png
    python tools/visualize.py --points scan.bin --boxes pred.json --bev-plot --out report_bev.png

Box JSON: `{"boxes": [{"box": [x, y, z, dx, dy, dz, heading], "label": "Vehicle", "score": 0.93}, ...]}`
(what tools/infer.py writes) or the bare list. Boxes follow docs/conventions.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


import numpy as np

from pc3d.cli.errors import UserError, input_file, run_cli, user_exit


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--points", type=Path, help="scan file (.bin/.npy/.ply/.pcd/.pth)")
    source.add_argument("--frame-info", type=Path, help="pc3d dataset info JSON (with --index)")
    parser.add_argument("--dim", type=int, default=None, help="float32 columns of a .bin scan (default 4)")
    parser.add_argument("--index", type=int, default=0, help="frame index in --frame-info")
    parser.add_argument("--boxes", type=Path, help="predicted boxes JSON (per-class colours, score-filtered)")
    parser.add_argument("--gt-boxes", type=Path, help="ground-truth boxes JSON (one colour)")
    parser.add_argument("--out", type=Path, default=None, help="output PNG (required unless --show)")
    parser.add_argument("--view", choices=("bev", "chase", "overview"), default="bev")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--color-by", choices=("height", "intensity", "label"), default="height")
    parser.add_argument("--point-labels", type=Path, default=None,
                        help="per-point labels for --color-by label: .npy (N,) ints or a SemanticKITTI .label file "
                             "(default: the label of the GT box containing each point)")
    parser.add_argument("--score-threshold", type=float, default=0.0)
    parser.add_argument("--theme", choices=("dark", "white"), default="dark")
    parser.add_argument("--backend", choices=("auto", "open3d", "software"), default="auto")
    parser.add_argument("--point-size", type=float, default=None, help="pixels (default: from density)")
    parser.add_argument("--line-width", type=float, default=None, help="pixels (default: from image size)")
    parser.add_argument("--bev-plot", action="store_true", help="write a matplotlib BEV figure instead")
    parser.add_argument("--show", action="store_true", help="open an interactive Open3D window (needs a display)")
    args = parser.parse_args(argv)
    if args.out is None and not args.show:
        parser.error("--out is required unless --show is given")
    return args


def load_boxes_json(path: Path, class_names=None):
    """Boxes3D from a box JSON file: {"boxes": [...]} or a bare list of {"box", "label", "score"}.

    `class_names` (e.g. the dataset's) fixes the label order, hence the colours; labels not in it are
    appended in order of appearance.
    """
    from pc3d.structures import Boxes3D

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise user_exit(f"box file not found: {path}")
    except json.JSONDecodeError as err:
        raise user_exit(f"{path} is not valid JSON ({err})")
    items = data.get("boxes") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise user_exit(f"{path}: expected {{\"boxes\": [...]}} or a list of boxes")
    names = list(class_names or [])
    for item in items:
        label = item.get("label") if isinstance(item, dict) else None
        if isinstance(label, str) and label not in names:
            names.append(label)
    try:
        return Boxes3D.from_json(items, names or None)
    except (KeyError, ValueError, TypeError) as err:
        raise user_exit(f"{path}: bad box entry ({err})")


def load_point_labels(path: Path, num_points: int) -> np.ndarray:
    """(N,) int64 labels from .npy or a SemanticKITTI .label (uint32: semantic id in the low 16 bits)."""
    if not path.is_file():
        raise user_exit(f"point label file not found: {path}")
    if path.suffix == ".label":
        labels = (np.fromfile(path, dtype=np.uint32) & 0xFFFF).astype(np.int64)
    else:
        try:
            labels = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise user_exit(f"{path}: not a readable .npy array ({err})")
        if not np.issubdtype(labels.dtype, np.integer):
            raise user_exit(f"{path}: point labels must be integers, got {labels.dtype}")
        labels = labels.reshape(-1).astype(np.int64)
    if labels.shape[0] != num_points:
        raise user_exit(f"{path}: {labels.shape[0]} labels for {num_points} points")
    return labels


def load_info_frame(info_path: Path, index: int):
    """(points (N, C), gt Boxes3D, frame id, class names) of frame `index` of a pc3d info file."""
    from pc3d.data.info_dataset import read_infos
    from pc3d.structures import Boxes3D

    infos = read_infos(info_path)
    frames = infos["frames"]
    if not 0 <= index < len(frames):
        raise user_exit(f"--index {index} out of range: {info_path} has {len(frames)} frames")
    info = frames[index]
    points = np.load(info_path.parent / info["points"], allow_pickle=False)
    names = list(infos["class_names"])
    labels = list(info.get("labels", []))
    for name in labels:  # labels outside the class list still get drawn
        if name not in names:
            names.append(name)
    boxes = np.asarray(info.get("boxes", []), dtype=np.float32).reshape(-1, 7) if info.get("boxes") else np.zeros((0, 7))
    gt = Boxes3D(boxes, [names.index(n) for n in labels], tuple(names)) if len(boxes) else Boxes3D.empty(names)
    return points, gt, str(info.get("frame_id", index)), names


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except RuntimeError as err:  # a render backend that cannot start (no display for --show)
        raise UserError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    from pc3d.viz.bev_plot import bev_plot
    from pc3d.viz.render import render_frame, show_frame

    title = None
    class_names = None
    gt = None
    if args.frame_info is not None:
        points, gt, frame_id, class_names = load_info_frame(args.frame_info, args.index)
        title = f"{args.frame_info.name} [{args.index}] {frame_id}"
    else:
        from pc3d.io.points import read_points
        try:
            path = input_file(args.points, "point")
        except UserError as err:
            raise user_exit(str(err)) from None
        points = read_points(path, args.dim)
        title = args.points.name
    if args.gt_boxes is not None:
        gt = load_boxes_json(args.gt_boxes, class_names)
        class_names = list(gt.class_names)
    pred = load_boxes_json(args.boxes, class_names) if args.boxes is not None else None
    point_labels = load_point_labels(args.point_labels, len(points)) if args.point_labels is not None else None
    if args.show:
        show_frame(points, gt, pred, view=args.view, width=args.width, height=args.height, color_by=args.color_by,
                   score_threshold=args.score_threshold, point_labels=point_labels, theme=args.theme,
                   point_size=args.point_size, line_width=args.line_width, title=title or "pc3d")
        if args.out is None:
            return 0
    if args.bev_plot:
        path = bev_plot(points, gt, pred, out=args.out, score_threshold=args.score_threshold,
                        color_by=args.color_by, title=title, theme=args.theme, point_labels=point_labels)
        print(f"wrote {path}")
        return 0
    info = render_frame(points, gt, pred, out=args.out, view=args.view, width=args.width, height=args.height,
                        color_by=args.color_by, score_threshold=args.score_threshold, backend=args.backend,
                        point_labels=point_labels, theme=args.theme, point_size=args.point_size,
                        line_width=args.line_width, title=title)
    print(f"wrote {info.path} ({info.backend}, {info.seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
