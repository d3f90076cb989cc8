import math

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
