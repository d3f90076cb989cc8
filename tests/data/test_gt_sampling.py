"""GT database (writer + restricted reader, OpenPCDet / mmdet3d layouts) and GT-sampling augmentation."""
import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.config import ConfigError
from pc3d.data.gt_database import GTDatabase, write_gt_database
from pc3d.data.gt_sampling import GTSampler, Visibility, _spherical_cells
from pc3d.data.info_dataset import InfoDataset
from pc3d.ops.box_geometry import box_iou_bev, points_in_boxes
from pc3d.structures import Boxes3D, Frame, PointCloud

CLASSES = ["Vehicle", "Pedestrian", "Cyclist"]
FEATURES = ["x", "y", "z", "intensity"]


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory):
    """Three simulated street frames and their database (the CLI's code path)."""
    from pc3d.data.synthetic import write_synthetic_dataset
    from pc3d.data.synthetic.writer import write_synthetic_gt_database
    root = tmp_path_factory.mktemp("gts")
    write_synthetic_dataset(root, 3, 11, split="train", progress=False)
    path = write_synthetic_gt_database(root, "train")
    return root, path


def sampler(db, **kw):
    args = dict(sample_groups={"Vehicle": 30, "Pedestrian": 16, "Cyclist": 10},
                min_points={"Vehicle": 5, "Pedestrian": 5, "Cyclist": 5}, seed=0)
    args.update(kw)
    return GTSampler(db, **args)


def test_database_cuts_every_box(synthetic_db):
    root, path = synthetic_db
    infos = json.loads((root / "train_infos.json").read_text())
    assert path.name == "synthetic_dbinfos_train.pkl" and (root / "gt_database").is_dir()
    db = GTDatabase(path)
    assert len(db) == sum(len(f["labels"]) for f in infos["frames"])
    frames = {f["frame_id"]: f for f in infos["frames"]}
    for name, entries in db.entries.items():
        for entry in entries[:20]:
            obj = db.load(entry)
            frame = frames[entry.sample_idx]
            i = int(entry.path.rsplit("_", 1)[1].split(".")[0])
            assert frame["labels"][i] == name == obj.name
            np.testing.assert_allclose(obj.box, frame["boxes"][i], atol=1e-6)
            # the writer's point count equals the simulator's label count, and every point is in the box
            assert len(obj.points) == entry.num_points == frame["num_points"][i]
            assert points_in_boxes(obj.points[:, :3], obj.box[None]).all()
            assert entry.difficulty == frame["difficulty"][i]


def test_pasted_objects_keep_points_and_labels(synthetic_db):
    root, path = synthetic_db
    db = GTDatabase(path)
    s = sampler(db)
    dataset = InfoDataset(root, "train", CLASSES, FEATURES)
    frame = dataset[0]
    frame = replace(frame, gt_boxes=frame.gt_boxes[frame.gt_boxes.num_points > 0])
    chosen = s.choose(frame)
    assert chosen, "nothing was pasted"
    out = s(frame)
    n_old = len(frame.gt_boxes)
    assert len(out.gt_boxes) == n_old + len(chosen)
    assert torch.equal(out.gt_boxes.boxes[:n_old], frame.gt_boxes.boxes)
    assert out.gt_boxes.names[n_old:] == [e.name for e in chosen]
    pts = out.points.points.numpy()
    inside = points_in_boxes(pts[:, :3], out.gt_boxes.boxes[n_old:].numpy())
    for k, entry in enumerate(chosen):
        obj = db.load(entry)
        # the points inside a pasted box are exactly the object's (scene points there were removed)
        got = pts[inside[:, k]]
        assert len(got) == entry.num_points == int(out.gt_boxes.num_points[n_old + k])
        np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], obj.points[np.lexsort(obj.points.T[::-1])])
        assert entry.sample_idx != frame.frame_id
    # the original objects keep their points
    assert torch.equal(out.gt_boxes.num_points[:n_old], frame.gt_boxes.num_points)


def test_no_overlap_and_filters(synthetic_db):
    root, path = synthetic_db
    db = GTDatabase(path)
    s = sampler(db, exclude_difficulty=(2,), min_points={"Vehicle": 50, "Pedestrian": 20, "Cyclist": 20})
    dataset = InfoDataset(root, "train", CLASSES, FEATURES)
    for index in range(len(dataset)):
        frame = dataset[index]
        frame = replace(frame, gt_boxes=frame.gt_boxes[frame.gt_boxes.num_points > 0])
        chosen = s.choose(frame)
        assert all(e.difficulty != 2 for e in chosen)
        assert all(e.num_points >= {"Vehicle": 50, "Pedestrian": 20, "Cyclist": 20}[e.name] for e in chosen)
        out = s(frame)
        boxes = out.gt_boxes.boxes.numpy()
        n_old = len(frame.gt_boxes)
        iou = box_iou_bev(boxes[n_old:], boxes)
        iou[np.arange(len(iou)), n_old + np.arange(len(iou))] = 0.0
        assert iou.max(initial=0.0) == 0.0, "a pasted box overlaps another box"
        counts = {name: out.gt_boxes.names.count(name) for name in CLASSES}
        for name, target in s.sample_groups.items():  # never above the target when the scene was below it
            assert counts[name] <= max(target, frame.gt_boxes.names.count(name))


def test_same_seed_same_sample_and_epochs_differ(synthetic_db):
    root, path = synthetic_db
    dataset = InfoDataset(root, "train", CLASSES, FEATURES)
    frame = dataset[1]
    a, b = sampler(GTDatabase(path)), sampler(GTDatabase(path))  # e.g. two DDP ranks
    first, second = a(frame), b(frame)
    assert torch.equal(first.points.points, second.points.points)
    assert torch.equal(first.gt_boxes.boxes, second.gt_boxes.boxes)
    b.epoch = 1
    assert [e.path for e in b.choose(frame)] != [e.path for e in a.choose(frame)]
    assert [e.path for e in sampler(GTDatabase(path), seed=5).choose(frame)] != [e.path for e in a.choose(frame)]


def test_disable_after_epoch(synthetic_db):
    root, path = synthetic_db
    frame = InfoDataset(root, "train", CLASSES, FEATURES)[1]
    s = sampler(GTDatabase(path), disable_after_epoch=2)
    s.epoch = 1
    assert len(s(frame).gt_boxes) > len(frame.gt_boxes)
    s.epoch = 2
    assert s(frame) is frame
    with pytest.raises(ValueError, match="disable_after_epoch must be an int >= 0"):
        sampler(GTDatabase(path), disable_after_epoch=-1)


def test_visibility_hides_what_is_behind(synthetic_db):
    root, path = synthetic_db
    db = GTDatabase(path)
    vis = Visibility((0.0, 0.0, 2.1), 0.32, 0.5, 0.5)
    s = sampler(db, visibility=vis)
    frame = InfoDataset(root, "train", CLASSES, FEATURES)[2]
    out = s(frame)
    n_old = len(frame.gt_boxes)
    pts = out.points.points.numpy()
    pasted = points_in_boxes(pts[:, :3], out.gt_boxes.boxes[n_old:].numpy()).any(axis=1)
    assert pasted.any()
    cells, rng = _spherical_cells(pts, vis)
    near = {}
    for c, r in zip(cells[pasted], rng[pasted]):
        near[c] = min(near.get(c, np.inf), r)
    behind = [r > near[c] + vis.depth_tolerance for c, r in zip(cells[~pasted], rng[~pasted]) if c in near]
    assert not any(behind), "a scene point behind a pasted object survived"
    counts = out.gt_boxes.num_points[n_old:]
    assert (counts >= 5).all()  # pasted boxes left with fewer than min_points are dropped


def test_config_errors(synthetic_db, tmp_path):
    root, path = synthetic_db
    with pytest.raises(FileNotFoundError, match="nowhere.pkl.*--gt-database"):
        GTSampler.from_config({"db_info": "nowhere.pkl", "sample_groups": {"Vehicle": 3}}, 0, root)
    with pytest.raises(ValueError, match="class 'Truck' is not in the database"):
        GTSampler.from_config({"db_info": path.name, "sample_groups": {"Truck": 3}}, 0, root)
    with pytest.raises(ConfigError, match="sample_group"):
        GTSampler.from_config({"db_info": path.name, "sample_group": {"Vehicle": 3}}, 0, root)
    with pytest.raises(ValueError, match="must be an int >= 0"):
        GTSampler.from_config({"db_info": path.name, "sample_groups": {"Vehicle": -1}}, 0, root)
    evil = tmp_path / "evil_dbinfos_train.pkl"
    evil.write_bytes(pickle.dumps({"Vehicle": [{"path": Path("x")}]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        GTDatabase(evil)
    broken = tmp_path / "broken_dbinfos_train.pkl"
    broken.write_bytes(pickle.dumps({"Vehicle": [{"path": "a.bin", "box3d_lidar": [1.0, 2.0]}]}))
    with pytest.raises(ValueError, match="has no 'num_points_in_gt'"):
        GTDatabase(broken)


def test_real_waymo_dbinfos(shared_data):
    """mmdet3d's Waymo database: boxes and points relative to the bottom centre, 5 point features."""
    root = shared_data / "waymo/kitti_format"
    path = root / "waymo_dbinfos_train.pkl"
    if not path.exists():
        pytest.skip(f"{path} missing")
    db = GTDatabase(path, point_features=["x", "y", "z", "intensity", "elongation"], box_origin="bottom")
    assert db.class_names == ["Car"] and len(db) == 1
    entry = db.entries["Car"][0]
    assert entry.path == "waymo_gt_database/0_Car_0.bin" and entry.num_points == 303
    obj = db.load(entry, ["x", "y", "z", "intensity"])
    assert obj.points.shape == (303, 4)
    # stored box z is the bottom (2.2025 m); pc3d's is the centre, half the 3.2 m height above
    np.testing.assert_allclose(obj.box[2], 2.2024696 + 1.6, atol=1e-5)
    assert points_in_boxes(obj.points[:, :3], obj.box[None]).mean() > 0.99
    # the stored offsets are from the bottom centre: all above it (a car's lower body, 0.06-1.2 m up)
    raw = np.fromfile(root / entry.path, np.float32).reshape(-1, 5)
    np.testing.assert_allclose(obj.points[:, :3] - (obj.box[:3] - [0, 0, obj.box[5] / 2]), raw[:, :3], atol=1e-5)
    assert raw[:, 2].min() > 0
    # pasting it into the real converted scan: its points arrive, the box is added
    scan = np.fromfile(root / "training/velodyne/0000000.bin", np.float32).reshape(-1, 6)[:, :4]
    far = scan[np.linalg.norm(scan[:, :2] - obj.box[:2], axis=1) > 10]
    frame = Frame(PointCloud(far, FEATURES), Boxes3D.empty(["Car"]), "other")
    out = GTSampler(db, {"Car": 1}, seed=0)(frame)
    assert len(out.gt_boxes) == 1 and len(out.points) == len(far) + 303


def toy_frames(root: Path, frames: int = 6):
    """Boxes on a 20 m square with points inside them, so that the database has something to paste."""
    rng = np.random.default_rng(0)
    (root / "points").mkdir(parents=True)
    infos = []
    for i in range(frames):
        n = int(rng.integers(1, 4))
        boxes = np.column_stack([rng.uniform(-8, 8, (n, 2)), np.zeros(n), np.full((n, 3), 1.5), rng.uniform(-3, 3, n)])
        pts = [np.column_stack([rng.uniform(-10, 10, (40, 2)), rng.uniform(-1, 1, 40), rng.uniform(0, 1, 40)])]
        for b in boxes:
            pts.append(np.column_stack([b[:3] + rng.uniform(-0.5, 0.5, (8, 3)), rng.uniform(0, 1, 8)]))
        np.save(root / "points" / f"{i:03d}.npy", np.concatenate(pts).astype(np.float32))
        infos.append({"frame_id": f"{i:03d}", "points": f"points/{i:03d}.npy", "boxes": boxes.tolist(),
                      "labels": ["Vehicle"] * n, "difficulty": [1] * n, "num_points": [8] * n})
    (root / "train_infos.json").write_text(json.dumps({"class_names": ["Vehicle"], "point_features": FEATURES,
                                                       "frames": infos}))
    dataset = InfoDataset(root, "train", ["Vehicle"], FEATURES)
    write_gt_database((dataset[i] for i in range(len(dataset))), root, "toy", "train", FEATURES)


class ToyDetector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def forward(self, batch):
        losses = [(self.mlp(batch.points_of(i)).mean() - float(len(batch.gt_boxes[i]))) ** 2
                  for i in range(batch.batch_size)]
        return torch.stack(losses).mean()


def test_resume_is_bit_exact_with_gt_sampling(tmp_path):
    from pc3d.engine.trainer import Trainer
    toy_frames(tmp_path / "data")

    def cfg(every=None):
        return {"dataset": {"type": "synthetic", "root": str(tmp_path / "data"), "class_names": ["Vehicle"],
                            "point_features": FEATURES},
                "train": {"max_steps": 10, "batch_size": 2, "seed": 3, "log_every": 1, "checkpoint_every_steps": every,
                          "optimizer": {"type": "adamw", "lr": 0.01, "weight_decay": 0.01},
                          "augment": {"rotation": [-0.5, 0.5], "scale": [0.9, 1.1], "flip_x": True, "flip_y": True},
                          "gt_sampling": {"db_info": "toy_dbinfos_train.pkl", "sample_groups": {"Vehicle": 5},
                                          "min_points": {"Vehicle": 4}}}}

    def run(c, work, resume=None):
        torch.manual_seed(0)
        trainer = Trainer(c, ToyDetector(), tmp_path / work, progress=False)
        assert trainer.gt_sampler is not None
        if resume:
            trainer.resume(resume)
        trainer.train()
        return trainer

    seen = []
    straight = run(cfg(), "a")
    # GT sampling is really on: frames come out with more boxes than they went in with
    frame = straight.dataset[0]
    seen.append(len(frame.gt_boxes))
    assert seen[0] > len(straight.dataset.boxes_of(0))
    run(cfg(5), "b")  # 3 steps per epoch: step 5 is mid-epoch
    resumed = run(cfg(), "c", resume=tmp_path / "b" / "step_0000005.pth")
    for a, c in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, c)


def test_create_data_kitti_gt_database(shared_data, tmp_path, capsys):
    from pc3d.cli.create_data import main
    root = shared_data / "kitti/object"
    if not root.exists():
        pytest.skip(f"{root} missing")
    assert main(["kitti", "--root", str(root), "--split", "train", "--gt-database", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    assert "kitti_dbinfos_train.pkl (3 objects)" in capsys.readouterr().out
    db = GTDatabase(tmp_path / "kitti_dbinfos_train.pkl")
    assert sorted(db.class_names) == ["Car", "Cyclist", "Pedestrian"]
    [pedestrian] = db.entries["Pedestrian"]
    # the shared README counts 376 points in 000000's pedestrian; one more sits on a face (see test_kitti)
    assert pedestrian.sample_idx == "000000" and pedestrian.num_points == 377
    assert (tmp_path / pedestrian.path).stat().st_size == 377 * 4 * 4


def test_create_data_nuscenes_gt_database_keeps_velocity(tmp_path, capsys):
    pytest.importorskip("nuscenes")
    from pc3d.cli.create_data import main
    from pc3d.testing.nuscenes_writer import write_nuscenes_tables
    rng = np.random.default_rng(0)
    frames = []
    for i in range(2):
        sizes = [[4.2, 1.9, 1.6], [0.7, 0.7, 1.8], [1.8, 0.6, 1.7]]
        boxes = np.array([[10.0 * k - 10, 5.0 * i, 0.0, *sizes[k], 0.3, 1.0 + k, -0.5] for k in range(3)], np.float32)
        pts = np.concatenate([b[:3] + rng.uniform(-0.3, 0.3, size=(30, 3)) * b[3:6] for b in boxes])
        pts = np.concatenate([pts, rng.uniform(0, 1, (len(pts), 1))], 1).astype(np.float32)
        gt = Boxes3D(boxes, [0, 1, 2], ("Vehicle", "Pedestrian", "Cyclist"), num_points=[30] * 3, difficulty=[1] * 3)
        frames.append(Frame(PointCloud(pts), gt, f"f{i}"))
    write_nuscenes_tables(frames, tmp_path, split="synthetic_val")
    assert main(["nuscenes", "--root", str(tmp_path), "--split", "synthetic_val", "--sweeps", "1", "--classes", "car",
                 "pedestrian", "bicycle", "--gt-database", "--no-progress"]) == 0
    db = GTDatabase(tmp_path / "nuscenes_dbinfos_synthetic_val.pkl")
    assert {k: len(v) for k, v in db.entries.items()} == {"car": 2, "pedestrian": 2, "bicycle": 2}
    assert db.entries["car"][0].point_features == ("x", "y", "z", "intensity", "time_lag")
    # one-sample scenes carry no annotation velocity in the devkit (NaN): the entry has none
    obj = db.load(db.entries["car"][0])
    assert obj.num_points == 30 and points_in_boxes(obj.points[:, :3], obj.box[None]).all()
    frame = Frame(PointCloud(np.zeros((1, 5), np.float32), ("x", "y", "z", "intensity", "time_lag")),
                  Boxes3D(np.zeros((0, 9), np.float32), [], ("car", "pedestrian", "bicycle")), "other")
    out = GTSampler(db, {"car": 1}, seed=0)(frame)
    assert out.gt_boxes.boxes.shape == (1, 9) and torch.isfinite(out.gt_boxes.boxes).all()
