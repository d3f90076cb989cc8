"""pc3d-test / tools/test.py: evaluate a checkpoint on a config's validation split.

    tools/test.py CONFIG CKPT [--set key=value ...] [--data-root DIR] [--split val] [--json] [--visualize N]
    torchrun --nproc_per_node 2 tools/test.py CONFIG CKPT
    tools/test.py configs/threedmatch/fpfh_ransac.yaml [--data-root DIR] [--json]   (no weights: no CKPT)

What is reported follows `dataset.type` (`pc3d.engine.evaluate.METRICS_BY_DATASET`): Waymo AP/APH for waymo and
synthetic, the KITTI benchmark's AP (next to the Waymo-style one) for kitti, the nuScenes devkit's mAP/NDS for
nuscenes and lyft, IR/FMR/RR for threedmatch (`pc3d.engine.registration_benchmark`).

metrics.json (and renders) go to `--out-dir`, by default `work_dirs/<config stem>/eval_<split>/`: never next
to the checkpoint, which may be the shipped one inside the repository's `checkpoints/`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pc3d.cli.errors import UserError, input_file, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("checkpoint", type=Path, nargs="?", help="the weights (not for a method without any: fpfh_ransac)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-root", help="use this copy of the config's dataset")
    p.add_argument("--split", help="default: dataset.val_split (val)")
    p.add_argument("--out-dir", type=Path, help="where metrics.json and renders go (default: work_dirs/<config stem>/eval_<split>)")
    p.add_argument("--visualize", type=int, default=0, metavar="N", help="render the first N frames (prediction vs GT)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--no-progress", action="store_true")
    return p


def format_nuscenes_metrics(metrics: dict) -> str:
    """The devkit's headline numbers, then AP per class."""
    head = " ".join(f"{k} {metrics[k]:.4f}" for k in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE"))
    return head + "\n" + "\n".join(f"{k[3:]:45s} {v:7.4f}" for k, v in metrics.items() if k.startswith("AP/"))


def format_metrics(metrics: dict) -> str:
    rows = {}
    for key, value in metrics.items():
        if "/" not in key or key.startswith("kitti/"):  # KITTI AP has its own table
            continue
        name, kind = key.rsplit("/", 1)
        rows.setdefault(name, {})[kind] = value
    lines = [f"{'breakdown':45s} {'AP':>7s} {'APH':>7s}"]
    for name, vals in rows.items():
        lines.append(f"{name:45s} {vals.get('AP', float('nan')):7.4f} {vals.get('APH', float('nan')):7.4f}")
    return "\n".join(lines)


def default_out_dir(config: Path, split: str) -> Path:
    """`work_dirs/<config stem>/eval_<split>` (relative to the current directory, like tools/train.py's)."""
    return Path("work_dirs") / config.stem / f"eval_{split}"


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from pc3d.config import load_config
    from pc3d.data.build import build_dataset
    from pc3d.engine.distributed import cleanup, init_distributed
    from pc3d.engine.evaluate import dataset_metrics, metric_family, predict_dataset
    from pc3d.models.build import build_model, load_weights

    cfg = load_config(args.config, args.overrides)
    if isinstance(cfg.get("dataset"), dict) and not metric_family(cfg).detection:
        return _test_benchmark(cfg, args)  # dataset.type: threedmatch -> IR / FMR / RR
    if args.checkpoint is None:
        raise UserError(f"{args.config}: a checkpoint is required (tools/test.py CONFIG CKPT)")
    input_file(args.checkpoint, "checkpoint")
    from pc3d.models.registration.training import is_registration_config
    if is_registration_config(cfg):  # model.type: roitr without a benchmark -> synthetic validation pairs, RR / IR
        return _test_registration(cfg, args)
    dist_info = init_distributed(args.device)
    try:
        model = build_model(cfg)
        load_weights(model, args.checkpoint)
        model.to(dist_info.device)
        split = args.split or cfg["dataset"].get("val_split", "val")
        dataset = build_dataset(cfg["dataset"], split, None, args.data_root)
        result = predict_dataset(model, dataset, dist_info, progress=not args.no_progress and not args.json)
        if result is None:
            return 0
        predictions, ground_truths, seconds = result
        out_dir = args.out_dir or default_out_dir(args.config, split)
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics = dataset_metrics(cfg, dataset, predictions, ground_truths, out_dir)
        metrics["frames"] = len(predictions)
        metrics["seconds_per_frame"] = seconds
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if args.visualize:
            from pc3d.viz import render_frame
            for i in range(min(args.visualize, len(dataset))):
                frame = dataset[i]
                render_frame(frame.points.points.numpy(), frame.gt_boxes, predictions[i],
                             out_dir / f"{i:04d}_{frame.frame_id}.png", view="bev")
        if args.json:
            print(json.dumps(metrics))
        else:
            print(format_nuscenes_metrics(metrics) if "NDS" in metrics else format_metrics(metrics))
            if any(k.startswith("kitti/") for k in metrics):
                from pc3d.evaluation.kitti_metric import format_kitti_metrics
                print(format_kitti_metrics(metrics))
            print(f"{len(predictions)} frames, {seconds * 1e3:.1f} ms/frame; metrics and renders: {out_dir}")
    finally:
        cleanup(dist_info)
    return 0


def _test_benchmark(cfg: dict, args) -> int:
    import torch
    from pc3d.engine.registration_benchmark import benchmark_metrics, format_benchmark_metrics, needs_checkpoint
    if needs_checkpoint(cfg):
        if args.checkpoint is None:
            raise UserError(f"{args.config}: model.type {cfg['model'].get('type')!r} needs a checkpoint")
        input_file(args.checkpoint, "checkpoint")
    elif args.checkpoint is not None:
        raise UserError(f"{args.config}: model.type {cfg['model'].get('type')!r} has no weights; drop {args.checkpoint}")
    torch.set_num_threads(1)
    metrics = benchmark_metrics(cfg, args.checkpoint, args.data_root, progress=not args.no_progress and not args.json)
    out_dir = args.out_dir or default_out_dir(args.config, cfg["dataset"].get("benchmark", "3DMatch"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_benchmark_metrics(metrics))
        print(f"{metrics['method']}, {metrics['seconds_per_pair']:.2f} s/pair; metrics: {out_dir / 'metrics.json'}")
    return 0


def _test_registration(cfg: dict, args) -> int:
    import torch
    from pc3d.models.registration.training import evaluate_checkpoint
    torch.set_num_threads(1)
    metrics = evaluate_checkpoint(cfg, args.checkpoint)
    out_dir = args.out_dir or default_out_dir(args.config, "val")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if args.json:
        print(json.dumps(metrics))
    else:
        for key, value in metrics.items():
            print(f"{key:35s} {value:.4f}" if isinstance(value, float) else f"{key:35s} {value}")
        print(f"metrics: {out_dir / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
