#!/usr/bin/env python
"""pc3d Waymo AP/APH: time on ~1M random boxes, and a cross-check against the official TF op.

    benchmarks/bench_waymo_metrics.py [--json] [--boxes 1000000] [--official] [--official-boxes 100000]

Random frames: ground truths of the three classes with realistic sizes and LEVEL_1/2 difficulty;
predictions are jittered copies (some with flipped or noisy heading, some duplicated, so matching has
real conflicts) plus random false positives, with scores correlated to the jitter.

`--official` also evaluates the same predictions with `waymo_open_dataset.metrics.ops.py_metrics_ops.
detection_metrics` (C++ op, needs TensorFlow) inside a throw-away venv OUTSIDE the project
(`--official-venv`, default /tmp/waymo-tf-venv; `--setup-official` creates it with
`pip install waymo-open-dataset-tf-2-12-0==1.6.7`, ~3 GB, PyPI only) and reports the max |AP/APH|
difference and both timings. Never part of the test suite.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, report  # noqa: E402

from pc3d.evaluation.waymo_metric import breakdown_name, waymo_metrics  # noqa: E402
from pc3d.structures import Boxes3D  # noqa: E402

CLASS_NAMES = ("Vehicle", "Pedestrian", "Cyclist")
SIZES = np.array([[4.6, 2.0, 1.7], [0.9, 0.8, 1.8], [1.8, 0.7, 1.7]])
WAYMO_TYPE = np.array([1, 2, 4])          # label_pb2.Label.Type of each pc3d class index

OFFICIAL_SCRIPT = r'''
import json, sys, time
import numpy as np
import tensorflow as tf
from waymo_open_dataset import label_pb2
from waymo_open_dataset.metrics.ops import py_metrics_ops
from waymo_open_dataset.metrics.python import config_util_py
from waymo_open_dataset.protos import breakdown_pb2, metrics_pb2

data = np.load(sys.argv[1])
config = metrics_pb2.Config()
config.breakdown_generator_ids.append(breakdown_pb2.Breakdown.OBJECT_TYPE)
d = config.difficulties.add(); d.levels.append(label_pb2.Label.LEVEL_1); d.levels.append(label_pb2.Label.LEVEL_2)
config.matcher_type = metrics_pb2.MatcherProto.TYPE_HUNGARIAN
config.iou_thresholds.extend([0.0, 0.7, 0.5, 0.5, 0.5])
config.box_type = label_pb2.Label.Box.TYPE_3D
config.score_cutoffs.extend([i * 0.01 for i in range(100)] + [1.0])
start = time.perf_counter()
out = py_metrics_ops.detection_metrics(
    prediction_bbox=tf.constant(data["pd_box"], tf.float32), prediction_type=tf.constant(data["pd_type"], tf.uint8),
    prediction_score=tf.constant(data["pd_score"], tf.float32), prediction_frame_id=tf.constant(data["pd_frame"], tf.int64),
    prediction_overlap_nlz=tf.zeros(len(data["pd_score"]), tf.bool),
    ground_truth_bbox=tf.constant(data["gt_box"], tf.float32), ground_truth_type=tf.constant(data["gt_type"], tf.uint8),
    ground_truth_frame_id=tf.constant(data["gt_frame"], tf.int64),
    ground_truth_difficulty=tf.constant(data["gt_difficulty"], tf.uint8), config=config.SerializeToString())
ap, aph = out[0].numpy(), out[1].numpy()
seconds = time.perf_counter() - start
names = config_util_py.get_breakdown_names_from_config(config)
result = {}
for name, a, h in zip(names, ap, aph):
    result[name + "/AP"] = float(a); result[name + "/APH"] = float(h)
print(json.dumps({"seconds": seconds, "metrics": result}))
'''


def random_frames(num_boxes: int, boxes_per_frame: int = 200, seed: int = 0):
    """About `num_boxes` boxes in total (ground truths + predictions) over frames of ~`boxes_per_frame`."""
    rng = np.random.default_rng(seed)
    num_frames = max(1, num_boxes // boxes_per_frame)
    preds, gts = [], []
    for _ in range(num_frames):
        m = rng.integers(boxes_per_frame // 4, boxes_per_frame // 2)
        labels = rng.choice(3, m, p=[0.6, 0.3, 0.1])
        gt = np.zeros((m, 7))
        gt[:, :2] = rng.uniform(-75, 75, (m, 2))
        gt[:, 3:6] = SIZES[labels] * rng.uniform(0.85, 1.15, (m, 3))
        gt[:, 2] = gt[:, 5] / 2 + rng.normal(0, 0.1, m)
        gt[:, 6] = rng.uniform(-np.pi, np.pi, m)
        num_points = rng.integers(0, 300, m) * (rng.random(m) < 0.9) + rng.integers(0, 8, m) * (rng.random(m) < 0.3)
        difficulty = np.where((num_points <= 5) | (rng.random(m) < 0.1), 2, 1)
        # detections: jittered copies of ~80% of the ground truth, 10% duplicated
        hit = rng.random(m) < 0.8
        dup = hit & (rng.random(m) < 0.1)
        src = np.concatenate([np.nonzero(hit)[0], np.nonzero(dup)[0]])
        quality = rng.uniform(0, 1, src.size)
        pd = gt[src].copy()
        pd[:, :3] += rng.normal(0, 1, (src.size, 3)) * (0.05 + 0.4 * (1 - quality))[:, None] * gt[src, 3:6] / 4
        pd[:, 3:6] *= 1 + rng.normal(0, 0.08, (src.size, 3)) * (1 - quality)[:, None]
        pd[:, 3:6] = np.abs(pd[:, 3:6])
        pd[:, 6] += rng.normal(0, 0.3, src.size) * (1 - quality)
        flip = rng.random(src.size) < 0.1
        pd[flip, 6] += np.pi
        pd[:, 6] = (pd[:, 6] + np.pi) % (2 * np.pi) - np.pi
        score = np.clip(0.3 * quality + 0.7 * rng.random(src.size), 0, 1)
        pd_labels = labels[src]
        # false positives
        n_fp = boxes_per_frame - m - src.size
        if n_fp > 0:
            fp_labels = rng.choice(3, n_fp, p=[0.6, 0.3, 0.1])
            fp = np.zeros((n_fp, 7))
            fp[:, :2] = rng.uniform(-75, 75, (n_fp, 2))
            fp[:, 3:6] = SIZES[fp_labels] * rng.uniform(0.85, 1.15, (n_fp, 3))
            fp[:, 2] = fp[:, 5] / 2
            fp[:, 6] = rng.uniform(-np.pi, np.pi, n_fp)
            pd = np.concatenate([pd, fp])
            pd_labels = np.concatenate([pd_labels, fp_labels])
            score = np.concatenate([score, rng.random(n_fp) * 0.6])
        preds.append(Boxes3D(pd.astype(np.float32), pd_labels, CLASS_NAMES, score.astype(np.float32)))
        gts.append(Boxes3D(gt.astype(np.float32), labels, CLASS_NAMES, difficulty=difficulty, num_points=num_points))
    return preds, gts


def to_official_arrays(preds, gts) -> dict:
    """Flat arrays for the TF op; ground truths with 0 points dropped (as pc3d and the official tool do)."""
    pd_box, pd_type, pd_score, pd_frame, gt_box, gt_type, gt_frame, gt_diff = [], [], [], [], [], [], [], []
    for i, (p, g) in enumerate(zip(preds, gts)):
        pd_box.append(p.boxes.numpy()); pd_type.append(WAYMO_TYPE[p.labels.numpy()]); pd_score.append(p.scores.numpy())
        pd_frame.append(np.full(len(p), i))
        keep = g.num_points.numpy() > 0
        gt_box.append(g.boxes.numpy()[keep]); gt_type.append(WAYMO_TYPE[g.labels.numpy()[keep]])
        gt_frame.append(np.full(int(keep.sum()), i)); gt_diff.append(g.difficulty.numpy()[keep])
    cat = np.concatenate
    return {"pd_box": cat(pd_box).astype(np.float32), "pd_type": cat(pd_type).astype(np.uint8),
            "pd_score": cat(pd_score).astype(np.float32), "pd_frame": cat(pd_frame).astype(np.int64),
            "gt_box": cat(gt_box).astype(np.float32), "gt_type": cat(gt_type).astype(np.uint8),
            "gt_frame": cat(gt_frame).astype(np.int64), "gt_difficulty": cat(gt_diff).astype(np.uint8)}


def setup_official_venv(venv: Path) -> None:
    if (venv / "bin" / "python").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "waymo-open-dataset-tf-2-12-0==1.6.7"], check=True)


def run_official(preds, gts, venv: Path) -> dict:
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no official-op venv at {venv}: pass --setup-official to build it (~3 GB, PyPI)")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "boxes.npz"
        np.savez(data, **to_official_arrays(preds, gts))
        script = Path(tmp) / "official.py"
        script.write_text(OFFICIAL_SCRIPT)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
        out = subprocess.run([str(python), str(script), str(data)], capture_output=True, text=True, env=env, cwd=tmp)
    if out.returncode != 0:
        raise SystemExit(f"official op failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=1_000_000, help="total random boxes for the timing run")
    parser.add_argument("--official", action="store_true", help="cross-check against the official TF op")
    parser.add_argument("--official-boxes", type=int, default=100_000, help="boxes in the cross-check set")
    parser.add_argument("--official-venv", type=Path, default=Path("/tmp/waymo-tf-venv"))
    parser.add_argument("--setup-official", action="store_true", help="create the official-op venv if missing")
    args = parser.parse_args(argv)

    preds, gts = random_frames(args.boxes, seed=0)
    total = sum(len(p) + len(g) for p, g in zip(preds, gts))
    waymo_metrics(preds[:2], gts[:2])          # warm-up (numba compile of the IoU kernel)
    start = time.perf_counter()
    metrics = waymo_metrics(preds, gts, CLASS_NAMES)
    seconds = time.perf_counter() - start
    report(f"waymo_metrics {total} boxes / {len(preds)} frames", seconds, None, None, None, args.json,
           vehicle_l1_ap=metrics[breakdown_name("VEHICLE", 1) + "/AP"],
           boxes_per_second=total / seconds)

    if args.official:
        if args.setup_official:
            setup_official_venv(args.official_venv)
        preds, gts = random_frames(args.official_boxes, seed=1)
        total = sum(len(p) + len(g) for p, g in zip(preds, gts))
        start = time.perf_counter()
        ours = waymo_metrics(preds, gts, CLASS_NAMES)
        seconds = time.perf_counter() - start
        official = run_official(preds, gts, args.official_venv)
        theirs = official["metrics"]
        diffs = {k: abs(ours[k] - theirs[k]) for k in ours}
        max_ap = max(v for k, v in diffs.items() if k.endswith("/AP"))
        max_aph = max(v for k, v in diffs.items() if k.endswith("/APH"))
        report(f"waymo_metrics vs official op ({total} boxes)", seconds, "official C++ op (TF 2.13)",
               official["seconds"], max(max_ap, max_aph) < 1e-4, args.json,
               max_ap_diff=max_ap, max_aph_diff=max_aph,
               ours=json.dumps({k: round(v, 6) for k, v in ours.items()}) if not args.json else ours,
               official=json.dumps({k: round(theirs[k], 6) for k in ours}) if not args.json else {k: theirs[k] for k in ours})
    return 0


if __name__ == "__main__":
    sys.exit(main())
