"""nuScenes-format loading on real tables (Lyft), the real nuScenes sweep, and devkit evaluation end to end."""
import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("nuscenes")

from pc3d.data.nuscenes import NuScenesDataset, load_boxes, load_nuscenes, split_sample_tokens  # noqa: E402
from pc3d.testing.nuscenes_writer import write_nuscenes_tables  # noqa: E402
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


def test_sweeps_are_moved_into_the_key_frame_with_time_lag(tmp_path):
    """A non-key sweep (other ego pose, 50 ms earlier) of the same world points lands on the key sweep's points."""
    from pc3d.data.nuscenes import load_lidar_points

    frames = _synthetic_frames(n=1, seed=3)
    write_nuscenes_tables(frames, tmp_path, split="synthetic_val")
    tables = tmp_path / "v1.0-pc3d"
    sample_data = json.loads((tables / "sample_data.json").read_text())
    poses = json.loads((tables / "ego_pose.json").read_text())
    calib = json.loads((tables / "calibrated_sensor.json").read_text())
    key, key_pose, key_cs = sample_data[0], poses[0], calib[0]

    def transform(rec):
        from pyquaternion import Quaternion
        t = np.eye(4)
        t[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
        t[:3, 3] = rec["translation"]
        return t

    key_to_global = transform(key_pose) @ transform(key_cs)
    sweep_pose = {"token": "sweep_pose", "timestamp": key["timestamp"] - 50_000,
                  "rotation": [math.cos(0.2), 0.0, 0.0, math.sin(0.2)],
                  "translation": [key_pose["translation"][0] - 0.7, key_pose["translation"][1] + 0.3, 0.0]}
    sweep_to_global = transform(sweep_pose) @ transform(key_cs)
    key_points = np.fromfile(tmp_path / key["filename"], np.float32).reshape(-1, 5)
    world = key_points[:, :3] @ key_to_global[:3, :3].T + key_to_global[:3, 3]
    sweep_to_sensor = np.linalg.inv(sweep_to_global)
    sweep_points = key_points.copy()
    sweep_points[:, :3] = world @ sweep_to_sensor[:3, :3].T + sweep_to_sensor[:3, 3]
    sweep_file = "sweeps/LIDAR_TOP/sweep.pcd.bin"
    (tmp_path / "sweeps/LIDAR_TOP").mkdir(parents=True)
    sweep_points.astype(np.float32).tofile(tmp_path / sweep_file)
    sweep = {**key, "token": "sweep_sd", "ego_pose_token": "sweep_pose", "timestamp": sweep_pose["timestamp"],
             "is_key_frame": False, "filename": sweep_file, "prev": "", "next": key["token"]}
    key["prev"] = "sweep_sd"
    (tables / "sample_data.json").write_text(json.dumps(sample_data + [sweep]))
    (tables / "ego_pose.json").write_text(json.dumps(poses + [sweep_pose]))

    nusc = load_nuscenes(tmp_path)
    merged = load_lidar_points(nusc, key["sample_token"], sweeps=10)
    n = len(key_points)
    assert merged.shape == (2 * n, 5)
    np.testing.assert_allclose(merged[n:, :3], merged[:n, :3], atol=2e-3)
    assert np.all(merged[:n, 4] == 0) and np.allclose(merged[n:, 4], 0.05)
