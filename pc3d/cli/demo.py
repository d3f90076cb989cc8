"""`make demo`: the whole pipeline on the embedded synthetic data, plus the real scans when present.

1. generate a synthetic validation set (seeded, never seen in training);
2. run the shipped detector on it, evaluate Waymo-style AP/APH;
3. render predictions vs ground truth (Open3D headless, software fallback) and a BEV plot;
4. run the same detector on the real KITTI / nuScenes scans in ../shared/data (if present);
5. register a synthetic room pair with the shipped RoITr matcher and with FPFH + RANSAC, and render it.
Prints where every output went.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from pc3d.checkpoint import shipped_checkpoint
from pc3d.cli.common import SCAN_INTENSITY_MAX, config_score_threshold, scale_intensity
from pc3d.cli.errors import UserError, run_cli

REPO = Path(__file__).resolve().parents[2]
SHIPPED_DETECTOR = "flatformer_synthetic_tiny"
SHARED = REPO.parent / "shared" / "data"
# (name, file, float32 columns, source): the source's intensity range (`SCAN_INTENSITY_MAX`) is rescaled to
# the config's `dataset.intensity_max`, as `tools/infer.py --intensity-max` does.
REAL_SCANS = (
    ("kitti_000001", SHARED / "kitti/object/training/velodyne/000001.bin", 4, "kitti"),
    ("nuscenes_sweep", SHARED / "nuscenes/mmdet3d_demo/samples/LIDAR_TOP/"
     "n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin", 5, "nuscenes"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "demo")
    p.add_argument("--frames", type=int, default=8, help="synthetic validation frames to generate")
    p.add_argument("--seed", type=int, default=2026, help="seed of the synthetic validation set")
    p.add_argument("--config", type=Path, default=REPO / "configs/synthetic" / f"{SHIPPED_DETECTOR}.yaml")
    p.add_argument("--checkpoint", type=Path, default=shipped_checkpoint(f"{SHIPPED_DETECTOR}.pth"))
    p.add_argument("--skip-registration", action="store_true")
    return p


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def detection_demo(args, outputs: dict) -> None:
    from pc3d.cli.test import format_metrics
    from pc3d.config import load_config
    from pc3d.data.build import build_dataset
    from pc3d.data.synthetic import write_synthetic_dataset
    from pc3d.engine.evaluate import config_metrics, predict_dataset
    from pc3d.models.build import build_model, load_weights
    from pc3d.viz import bev_plot, render_frame

    data_root = args.out / f"synthetic_val_seed{args.seed}"
    _step(f"synthetic validation set: {args.frames} frames, seed {args.seed} -> {data_root}")
    if not (data_root / "val_infos.json").exists():
        write_synthetic_dataset(data_root, args.frames, args.seed, split="val", progress=False)
    cfg = load_config(args.config, [f"dataset.root={data_root}"])
    model = build_model(cfg)
    load_weights(model, args.checkpoint)
    model.eval()
    dataset = build_dataset(cfg["dataset"], "val")
    threshold = config_score_threshold(cfg)  # the tools' default too (tools/infer.py --score-threshold)

    _step(f"detector {args.config.name} with {args.checkpoint.name}: inference + Waymo-style evaluation")
    # One untimed warm-up frame first: the first forward pass loads numba kernels and allocates buffers, and
    # averaged into 8 frames it made the per-frame time look 5-15x slower than it is.
    from torch.utils.data import Subset
    predict_dataset(model, Subset(dataset, [0]), progress=False)
    predictions, ground_truths, seconds = predict_dataset(model, dataset, progress=False)
    metrics = config_metrics(cfg, predictions, ground_truths)
    metrics.update(frames=len(predictions), seconds_per_frame=seconds)
    print(format_metrics(metrics))
    print(f"{len(predictions)} frames, {seconds * 1e3:.0f} ms/frame on the CPU "
          f"(mean over every frame incl. loading, after 1 untimed warm-up frame)")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    outputs["metrics"] = args.out / "metrics.json"

    _step("renders: predictions (class colours) vs ground truth (green)")
    for i in range(min(2, len(dataset))):
        frame = dataset[i]
        pts = frame.points.points.numpy()
        for view in ("bev", "chase"):
            info = render_frame(pts, frame.gt_boxes, predictions[i], args.out / f"synthetic_{i}_{view}.png", view=view,
                                score_threshold=threshold, title=f"synthetic val frame {i} ({view})")
            print(f"  {info.path}  ({info.backend}, {info.seconds:.2f} s)")
            outputs.setdefault("renders", []).append(info.path)
        bev = bev_plot(pts, frame.gt_boxes, predictions[i], out=args.out / f"synthetic_{i}_bev_plot.png", score_threshold=threshold)
        outputs["renders"].append(bev if isinstance(bev, (str, Path)) else args.out / f"synthetic_{i}_bev_plot.png")

    _step("the same detector on real scans (trained on synthetic data only: expect a domain gap)")
    from pc3d.io.points import read_points
    from pc3d.structures import Frame, PointCloud, collate
    for name, path, dim, source in REAL_SCANS:
        if not path.exists():
            print(f"  {name}: {path} not found, skipped (place ../shared/data beside the checkout)")
            continue
        pts = scale_intensity(read_points(path, dim)[:, :4].copy(), ("x", "y", "z", "intensity"), cfg,
                              SCAN_INTENSITY_MAX[source], str(path))
        start = time.perf_counter()
        boxes = model(collate([Frame(PointCloud(pts))]))[0]
        elapsed = time.perf_counter() - start
        info = render_frame(pts, _kitti_labels(path) if name.startswith("kitti") else None, boxes,
                            args.out / f"real_{name}.png", view="bev", score_threshold=threshold,
                            title=f"{name}: synthetic-trained detector (GT green where labelled)")
        kept = int((boxes.scores >= threshold).sum()) if boxes.scores is not None else len(boxes)
        print(f"  {name}: {len(pts)} points, {kept} boxes with score >= {threshold:g}, {elapsed * 1e3:.0f} ms "
              f"-> {info.path}")
        outputs.setdefault("renders", []).append(info.path)


def _kitti_labels(scan_path: Path):
    """The KITTI label_2 boxes of a scan, in the pc3d frame (labels cover the camera's field of view only)."""
    from pc3d.data.kitti import KittiDataset

    dataset = KittiDataset(scan_path.parents[2], "train", ("Car", "Van", "Truck", "Pedestrian", "Cyclist"))
    return dataset.boxes_of(dataset.frame_ids.index(scan_path.stem))


def registration_demo(args, outputs: dict) -> None:
    from pc3d.data.synthetic import make_registration_pair
    from pc3d.evaluation.registration_metrics import relative_rotation_error, relative_translation_error
    from pc3d.models.registration.build import build_registration
    from pc3d.viz import render_registration

    _step("registration: a synthetic room pair (RoITr, shipped checkpoint) vs FPFH + RANSAC")
    pair = make_registration_pair(args.seed, overlap="high")
    methods = {"fpfh": {}}
    ckpt = shipped_checkpoint("roitr_synthetic_tiny.pth")
    if ckpt.exists():
        methods = {"roitr": {"ckpt": ckpt}, **methods}
    for method, kwargs in methods.items():
        result = build_registration(method, **kwargs).register(pair.src_points, pair.ref_points)
        rre = relative_rotation_error(result.transform, pair.transform)
        rte = relative_translation_error(result.transform, pair.transform)
        out = args.out / f"registration_{method}.png"
        render_registration(pair.src_points, pair.ref_points, result.transform, out=out,
                            title=f"{method}: RRE {rre:.2f} deg, RTE {rte * 100:.1f} cm, {result.seconds:.2f} s")
        print(f"  {method}: RRE {rre:.2f} deg  RTE {rte * 100:.1f} cm  inliers {result.inliers}  "
              f"{result.seconds:.2f} s -> {out}")
        outputs.setdefault("renders", []).append(out)


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # numba notes at first parallel launch that this system's TBB is too old and uses OpenMP instead
    warnings.filterwarnings("ignore", message="The TBB threading layer requires TBB")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.checkpoint.is_file():
        raise UserError(f"{args.checkpoint}: shipped checkpoint is missing (or set PC3D_CHECKPOINT_DIR)")
    outputs: dict = {}
    start = time.perf_counter()
    detection_demo(args, outputs)
    if not args.skip_registration:
        registration_demo(args, outputs)
    _step(f"done in {time.perf_counter() - start:.0f} s; outputs in {args.out}")
    print(f"  metrics: {outputs.get('metrics')}")
    for path in outputs.get("renders", []):
        print(f"  render:  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
