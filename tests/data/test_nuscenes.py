"""nuScenes-format loading on real tables (Lyft), the real nuScenes sweep, and devkit evaluation end to end."""
import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("nuscenes")

from pc3d.data.nuscenes import NuScenesDataset, load_boxes, load_nuscenes, split_sample_tokens  # noqa: E402
from pc3d.data.nuscenes_writer import write_nuscenes_tables  # noqa: E402
from pc3d.evaluation.nuscenes_eval import evaluate_nuscenes  # noqa: E402
from pc3d.structures import Boxes3D, Frame, PointCloud  # noqa: E402

LYFT_CLASSES = ("car", "truck", "pedestrian", "bicycle", "other_vehicle")


def test_lyft_tables_load_with_devkit_schema(shared_data):
    nusc = load_nuscenes(shared_data / "lyft/v1.01-train")
    tokens = split_sample_tokens(nusc, "all")
    assert len(tokens) == 1
    boxes = load_boxes(nusc, tokens[0], LYFT_CLASSES)
    assert boxes.has_velocity and len(boxes) >= 1
    # centres are moved from the global frame into the LiDAR frame: they must be near the sensor
    assert float(boxes.boxes[:, :2].norm(dim=1).max()) < 150
    # the box's size in the table is (w, l, h); pc3d's is (dx=l, dy=w, dz=h)
    ann = nusc.get("sample_annotation", nusc.get("sample", tokens[0])["anns"][0])
    w, l, h = ann["size"]
    assert any(np.allclose(b[3:6].numpy(), [l, w, h], atol=1e-4) for b in boxes.boxes)


def test_real_nuscenes_sweep_and_boxes(shared_data):
    """The mmdet3d demo keyframe: 34,688 points and 69 boxes in the LIDAR_TOP frame."""
    base = shared_data / "nuscenes/mmdet3d_demo"
    pts = np.fromfile(next((base / "samples/LIDAR_TOP").glob("*.pcd.bin")), np.float32).reshape(-1, 5)
    doc = json.loads(next(base.glob("*_boxes.json")).read_text())
    assert pts.shape == (34688, 5)
    assert len(doc["instances"] if "instances" in doc else doc["boxes"]) == 69


def _synthetic_frames(n=3, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        boxes, labels = [], []
        for k in range(4):
            label = k % 3
            size = [[4.2, 1.9, 1.6], [0.7, 0.7, 1.8], [1.8, 0.6, 1.7]][label]
            boxes.append([rng.uniform(-30, 30), rng.uniform(-30, 30), rng.uniform(-1, 0.5), *size,
                          rng.uniform(-math.pi, math.pi), 0.0, 0.0])
            labels.append(label)
        boxes = np.array(boxes, np.float32)
        pts = np.concatenate([b[:3] + rng.uniform(-0.3, 0.3, size=(40, 3)) * b[3:6] for b in boxes])
        pts = np.concatenate([pts, rng.uniform(0, 1, (len(pts), 1))], 1).astype(np.float32)
        gt = Boxes3D(boxes, labels, ("Vehicle", "Pedestrian", "Cyclist"), num_points=[40] * 4, difficulty=[1] * 4)
        frames.append(Frame(PointCloud(pts), gt, f"f{i}"))
    return frames


def test_written_tables_round_trip_through_loader(tmp_path):
    frames = _synthetic_frames()
    write_nuscenes_tables(frames, tmp_path, split="synthetic_val")
    ds = NuScenesDataset(tmp_path, "synthetic_val", ("car", "pedestrian", "bicycle"), sweeps=1)
    assert len(ds) == 3
    for frame, written in zip((ds[i] for i in range(3)), frames):
        np.testing.assert_allclose(frame.points.points[:, :3].numpy(), written.points.points[:, :3].numpy(), atol=1e-5)
        got, want = frame.gt_boxes.boxes.numpy(), written.gt_boxes.boxes.numpy()
        np.testing.assert_allclose(got[:, :6], want[:, :6], atol=1e-3)
        dh = (got[:, 6] - want[:, 6] + math.pi) % (2 * math.pi) - math.pi
        np.testing.assert_allclose(dh, 0, atol=1e-4)
        assert frame.gt_boxes.labels.tolist() == written.gt_boxes.labels.tolist()


def test_devkit_detection_eval_end_to_end(tmp_path):
    frames = _synthetic_frames(n=4, seed=1)
    tokens = write_nuscenes_tables(frames, tmp_path / "db", split="synthetic_val")
    ds = NuScenesDataset(tmp_path / "db", "synthetic_val", ("car", "pedestrian", "bicycle"), sweeps=1)
    classes = ("car", "pedestrian", "bicycle")
    perfect = {}
    for i, token in enumerate(tokens):
        gt = ds.boxes_of(i)
        perfect[token] = Boxes3D(gt.boxes, gt.labels, gt.class_names, scores=torch.linspace(0.9, 0.5, len(gt)))
    metrics = evaluate_nuscenes(ds.nusc, perfect, "synthetic_val", tmp_path / "eval", classes=classes)
    assert metrics["mAP"] == pytest.approx(1.0)
    for err in ("mATE", "mASE", "mAOE", "mAAE"):
        assert metrics[err] == pytest.approx(0.0, abs=1e-3), err
    # One-sample scenes have no neighbouring annotations, so the devkit cannot compute GT velocity
    # (NaN -> mAVE 1 by its NaN rule): NDS = (5 * mAP + 4 * (1 - 0) + (1 - 1)) / 10 = 0.9.
    assert metrics["NDS"] == pytest.approx(0.9, abs=1e-3)

    shifted = {t: Boxes3D(b.boxes + torch.tensor([5.0, 0, 0, 0, 0, 0, 0, 0, 0]), b.labels, b.class_names, b.scores)
               for t, b in perfect.items()}
    assert evaluate_nuscenes(ds.nusc, shifted, "synthetic_val", tmp_path / "eval2", classes=classes)["mAP"] == pytest.approx(0.0)


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no nuScenes table folder"):
        NuScenesDataset(tmp_path, "val")
