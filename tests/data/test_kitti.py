import math
from pathlib import Path

import numpy as np
import pytest

from pc3d.data.kitti import KittiCalib, KittiDataset, camera_boxes_to_lidar, read_labels


def _points_in_box(xyz, box):
    c, s = math.cos(-box[6]), math.sin(-box[6])
    local = xyz - box[:3]
    lx = local[:, 0] * c - local[:, 1] * s
    ly = local[:, 0] * s + local[:, 1] * c
    return (np.abs(lx) <= box[3] / 2) & (np.abs(ly) <= box[4] / 2) & (np.abs(local[:, 2]) <= box[5] / 2)


def test_every_labelled_box_contains_points(shared_data):
    ds = KittiDataset(shared_data / "kitti/object", "train", ("Car", "Pedestrian", "Cyclist", "Truck"))
    assert ds.frame_ids == ["000000", "000001"]
    counts = {}
    for i in range(len(ds)):
        frame = ds[i]
        xyz = frame.points.points[:, :3].numpy()
        for box, name in zip(frame.gt_boxes.boxes.numpy(), frame.gt_boxes.names):
            counts.setdefault(frame.frame_id, []).append((name, int(_points_in_box(xyz, box).sum())))
    assert [n for n, _ in counts["000001"]] == ["Truck", "Car", "Cyclist"]
    assert all(c > 0 for frame in counts.values() for _, c in frame), counts
    # shared README: the 000000 Pedestrian box holds 376 points (an independent count). We count 377:
    # one point lies within float32 rounding of a face, where inclusive vs exclusive bounds differ.
    [(name, count)] = counts["000000"]
    assert name == "Pedestrian" and abs(count - 376) <= 1


def test_reduced_fov_frame_boxes_hold_points(shared_data):
    base = shared_data / "kitti/reduced_fov/pointpillars_demo"
    calib = KittiCalib.from_file(base / "000134.txt")
    objects = [o for o in read_labels(base / "000134_gt.txt") if o.name != "DontCare"]
    boxes = camera_boxes_to_lidar(np.stack([o.box_camera for o in objects]), calib)
    xyz = np.fromfile(base / "000134.bin", dtype=np.float32).reshape(-1, 4)[:, :3]
    inside = [int(_points_in_box(xyz, b).sum()) for b in boxes]
    assert sum(c > 0 for c in inside) >= len(inside) - 2  # far/occluded labels may be empty in the FOV crop
    assert max(inside) >= 500


def test_camera_to_lidar_conversion_geometry():
    calib = KittiCalib(np.zeros((3, 4)), np.eye(3), np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0]], float))
    # a car 10 m ahead in the camera (z forward), bottom at y=1.5 (camera y down), facing camera x (ry=0)
    box = camera_boxes_to_lidar(np.array([[0.0, 1.5, 10.0, 1.5, 1.8, 4.0, 0.0]]), calib)[0]
    np.testing.assert_allclose(box[:3], [10.0, 0.0, -0.75], atol=1e-6)
    np.testing.assert_allclose(box[3:6], [4.0, 1.8, 1.5])
    assert box[6] == pytest.approx(-math.pi / 2)  # camera +x is lidar -y


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="training/velodyne"):
        KittiDataset(tmp_path, "train")
    (tmp_path / "calib.txt").write_text("P2: 1 2 3\n")
    with pytest.raises(ValueError, match="calib.txt"):
        KittiCalib.from_file(tmp_path / "calib.txt")
    (tmp_path / "label.txt").write_text("Car 0 0\n")
    with pytest.raises(ValueError, match=r"label.txt:1"):
        read_labels(tmp_path / "label.txt")


# -- class map, ground-truth rule, KITTI metric wiring ---------------------------------------------------
def _kitti_cfg(root, **extra):
    return {"type": "kitti", "root": str(root), "class_names": ["Vehicle", "Pedestrian", "Cyclist"],
            "point_features": ["x", "y", "z", "intensity"], **extra}


def test_config_class_that_matches_no_kitti_type_is_an_error(shared_data):
    """Waymo-style class names on KITTI dropped every Car and scored 0 silently; now it is an error naming
    the class and the fix, and `dataset.class_map` makes Car boxes Vehicle boxes."""
    from pc3d.config import ConfigError
    from pc3d.data.build import build_dataset

    root = shared_data / "kitti/object"
    with pytest.raises(ConfigError, match=r"\['Vehicle'\] match no KITTI object type.*class_map"):
        build_dataset(_kitti_cfg(root), "train")
    with pytest.raises(ConfigError, match="not KITTI object types"):
        build_dataset(_kitti_cfg(root, class_map={"Automobile": "Vehicle"}), "train")
    with pytest.raises(ConfigError, match="not in dataset.class_names"):
        build_dataset(_kitti_cfg(root, class_map={"Car": "Auto"}), "train")
    ds = build_dataset(_kitti_cfg(root, class_map={"Car": "Vehicle", "Van": "Vehicle"}), "train")
    assert ds.boxes_of(1).names == ["Vehicle", "Cyclist"]  # 000001: Truck (not mapped), Car, Cyclist
    assert ds.kitti_eval_classes == ("Car", "Pedestrian", "Cyclist", "Van")


def test_label_with_nan_or_non_positive_size_is_rejected_naming_file_and_line(tmp_path):
    good = "Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 -16.53 2.39 58.49 1.57\n"
    dontcare = "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n"
    assert len(read_labels(_write(tmp_path / "ok.txt", good + dontcare))) == 2  # DontCare placeholders are fine
    for bad, what in (("Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 -3.69 -16.53 2.39 58.49 1.57", "not > 0"),
                      ("Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 0 3.69 -16.53 2.39 58.49 1.57", "not > 0"),
                      ("Car 0.00 0 1.85 387.63 181.54 423.81 203.12 1.67 1.87 3.69 nan 2.39 58.49 1.57", "NaN")):
        with pytest.raises(ValueError, match=rf"bad.txt \(line 2\): box 0 .*{what}"):
            read_labels(_write(tmp_path / "bad.txt", good + bad + "\n"))


def _write(path, text):
    path.write_text(text)
    return path


def test_kitti_metric_of_ground_truth_as_predictions(shared_data, tmp_path):
    """Through the dataset: Velodyne boxes -> camera boxes -> image boxes (P2) -> devkit AP. The 000000
    Pedestrian (easy) repeated 41 times (the 41 recall samples need >= 41 ground truths to reach 100)."""
    import torch

    from pc3d.engine.evaluate import kitti_dataset_metrics
    from pc3d.structures import Boxes3D

    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets/val.txt").write_text("000000\n" * 41)
    (tmp_path / "training").symlink_to(shared_data / "kitti/object/training")
    ds = KittiDataset(tmp_path, "val")
    gt = ds.boxes_of(0)
    exact = [Boxes3D(gt.boxes, gt.labels, gt.class_names, torch.full((len(gt),), 0.9))] * 41
    m = kitti_dataset_metrics(ds, exact)
    assert m["kitti/Pedestrian/3d_R40/easy"] == pytest.approx(100.0, abs=1e-4)
    assert m["kitti/Pedestrian/bev_R11/moderate"] == pytest.approx(100.0, abs=1e-4)
    moved = gt.boxes.clone()
    moved[:, 0] += 0.5  # 0.5 m along x: a 1.2 m long pedestrian box overlaps < 0.5
    off = [Boxes3D(moved, gt.labels, gt.class_names, torch.full((len(gt),), 0.9))] * 41
    assert kitti_dataset_metrics(ds, off)["kitti/Pedestrian/3d_R40/easy"] == 0.0
    behind = gt.boxes.clone()
    behind[:, 0] = -10.0  # behind the camera: outside the labelled field of view, left out (not a FP)
    both = [Boxes3D(torch.cat([gt.boxes, behind]), torch.cat([gt.labels, gt.labels]), gt.class_names,
                    torch.tensor([0.5, 0.9]))] * 41
    assert kitti_dataset_metrics(ds, both)["kitti/Pedestrian/3d_R40/easy"] == pytest.approx(100.0, abs=1e-4)


def test_test_tool_on_kitti_prints_the_kitti_metric(shared_data, tmp_path, capsys):
    """`tools/test.py ... --set dataset.type=kitti` with a class map: the KITTI AP keys are in --json."""
    import json

    from pc3d.cli.test import main

    repo = Path(__file__).resolve().parents[2]
    rc = main([str(repo / "configs/synthetic/flatformer_synthetic_tiny.yaml"),
               str(repo / "checkpoints/flatformer_synthetic_tiny.pth"), "--set", "dataset.type=kitti",
               "--set", "dataset.class_map={Car: Vehicle}", "--data-root", str(shared_data / "kitti/object"),
               "--split", "train", "--out-dir", str(tmp_path), "--json"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = [k for k in metrics if k.startswith("kitti/")]
    assert len(keys) == 36 and "kitti/Car/3d_R40/moderate" in keys
    assert all(0.0 <= metrics[k] <= 100.0 for k in keys)
