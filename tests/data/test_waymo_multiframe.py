"""Waymo multi-frame input (earlier frames moved into the current one with the poses) and `--gt-database`."""
import json

import numpy as np
import pytest

from pc3d.data.gt_database import GTDatabase
from pc3d.data.info_dataset import InfoDataset
from pc3d.cli import create_data
from pc3d.testing.waymo_synthetic_writer import default_lasers, write_synthetic_segment
from pc3d.ops.box_geometry import points_in_boxes

CLASSES = ("Vehicle", "Pedestrian", "Cyclist")
FEATURES = ("x", "y", "z", "intensity", "elongation")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    lasers = default_lasers(top_width=192, side_width=48)
    for seed in (1, 2):
        write_synthetic_segment(root / f"segment-{seed}_with_camera_labels.tfrecord", num_frames=3, seed=seed,
                                lasers=lasers)
    out = tmp_path_factory.mktemp("out")
    parser = create_data.build_parser("waymo")
    assert create_data.run(parser.parse_args(["waymo", "--root", str(root), "--out", str(out), "--gt-database"])) == 0
    return out


def test_previous_frames_move_into_the_current_one(converted):
    single = InfoDataset(converted, "train", CLASSES, FEATURES)
    multi = InfoDataset(converted, "train", CLASSES, FEATURES + ("time_lag",), sweeps=3)
    poses = json.loads((converted / "train_poses.json").read_text())
    for index, info in enumerate(multi.frames):
        frame = multi[index]
        pts = frame.points.points.numpy()
        history = multi.history[index]
        segment = [f for f in multi.frames if f["context_name"] == info["context_name"]]
        position = sorted(f["timestamp"] for f in segment).index(info["timestamp"])
        assert len(history) == min(position, 2)     # a segment's first frames use the history they have
        own = single[index].points.points.numpy()
        assert len(pts) == len(own) + sum(len(single[multi.frames.index(h)].points) for h in history)
        np.testing.assert_array_equal(pts[:len(own), :5], own)
        assert (pts[:len(own), 5] == 0).all()
        start = len(own)
        for past in history:
            raw = single[multi.frames.index(past)].points.points.numpy()
            part = pts[start:start + len(raw)]
            start += len(raw)
            # brute force: through the global frame, point by point
            to_global = np.asarray(poses[past["frame_id"]])
            from_global = np.linalg.inv(np.asarray(poses[info["frame_id"]]))
            for k in range(0, len(raw), max(1, len(raw) // 50)):
                p = from_global @ (to_global @ np.append(raw[k, :3].astype(np.float64), 1.0))
                np.testing.assert_allclose(part[k, :3], p[:3], atol=1e-3)
            np.testing.assert_array_equal(part[:, 3:5], raw[:, 3:5])
            np.testing.assert_allclose(part[:, 5], (info["timestamp"] - past["timestamp"]) * 1e-6, rtol=1e-6)
        # the scene is static: earlier points of an object land in its current box
        if history:
            boxes = frame.gt_boxes.boxes.numpy()
            moving_in = points_in_boxes(pts[len(own):, :3], boxes).sum()
            own_in = points_in_boxes(pts[:len(own), :3], boxes).sum()
            assert moving_in > 0.5 * own_in * len(history)


def test_multi_frame_errors(converted, tmp_path):
    with pytest.raises(ValueError, match="sweeps must be an int >= 1"):
        InfoDataset(converted, "train", CLASSES, FEATURES, sweeps=0)
    with pytest.raises(ValueError, match="time_lag"):
        InfoDataset(converted, "train", CLASSES, FEATURES + ("time_lag",))   # single frame has no time lag
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(converted, copy)
    (copy / "train_poses.json").unlink()
    with pytest.raises(FileNotFoundError, match="train_poses.json"):
        InfoDataset(copy, "train", CLASSES, FEATURES, sweeps=2)


def test_waymo_gt_database(converted):
    db = GTDatabase(converted / "waymo_dbinfos_train.pkl")
    infos = json.loads((converted / "train_infos.json").read_text())
    assert len(db) == sum(len(f["labels"]) for f in infos["frames"])
    for entries in db.entries.values():
        for entry in entries[:5]:
            obj = db.load(entry)
            assert obj.points.shape[1] == 5 and entry.point_features == FEATURES
            assert points_in_boxes(obj.points[:, :3], obj.box[None]).all()
