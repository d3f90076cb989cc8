"""Detector assembled from the YAML configs: forward/backward on real scans, empty frames, errors, infer tool."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.config import load_config
from pc3d.models.detector import Detector, DetectorLoss, build_detector, load_checkpoint
from pc3d.structures import Boxes3D, Frame, PointCloud, collate
from pc3d.testing.configs import tiny_widths

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = sorted((REPO / "configs" / "synthetic").glob("*_tiny.yaml"))
WAYMO = sorted((REPO / "configs" / "waymo").glob("*.yaml"))
NUSCENES = sorted((REPO / "configs" / "nuscenes").glob("*.yaml"))


def real_batch(scan: np.ndarray, names, class_names, with_velocity=False):
    """One real scan with two hand-placed GT boxes (targets only need plausible boxes)."""
    boxes = [[10.0, 3.0, -0.8, 4.2, 1.8, 1.5, 0.2], [6.0, -4.0, -0.9, 0.8, 0.7, 1.7, 1.0]]
    if with_velocity:
        boxes = [b + [1.0, -0.5] for b in boxes]
    gt = Boxes3D(torch.tensor(boxes), torch.tensor([0, len(class_names) - 1]), class_names)
    return collate([Frame(PointCloud(scan, tuple(names)), gt, "real")])


def forward_backward(cfg: dict, scan: np.ndarray):
    model = Detector.from_config(cfg)
    names = cfg["dataset"]["point_features"]
    if scan.shape[1] < len(names):  # KITTI has no elongation: zero-fill the Waymo extras
        scan = np.concatenate([scan, np.zeros((len(scan), len(names) - scan.shape[1]), np.float32)], axis=1)
    scan = scan[:, :len(names)]
    classes = tuple(cfg["dataset"]["class_names"])
    with_velocity = cfg["model"]["head"].get("regression", {}).get("velocity", 0) == 2
    batch = real_batch(scan, names, classes, with_velocity)
    model.train()
    loss = model(batch)
    assert isinstance(loss, DetectorLoss) and torch.isfinite(loss.total)
    assert set(loss.parts) >= {"heatmap", "regression"}
    assert ("iou" in loss.parts) == model.head.with_iou
    loss.total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[:3]), "VFE received no gradient"
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert len(out) == 1 and isinstance(out[0], Boxes3D) and out[0].scores is not None
    assert out[0].class_names == classes and out[0].has_velocity == with_velocity
    assert torch.isfinite(out[0].boxes).all()
    return model, out[0]


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: p.stem)
def test_synthetic_tiny_configs_forward_backward_on_kitti_scan(path, kitti_scan):
    forward_backward(load_config(path), kitti_scan)


@pytest.mark.parametrize("path", WAYMO, ids=lambda p: p.stem)
def test_waymo_configs_with_tiny_widths_on_kitti_scan(path, kitti_scan):
    forward_backward(tiny_widths(load_config(path)), kitti_scan)


@pytest.mark.parametrize("path", NUSCENES, ids=lambda p: p.stem)
def test_nuscenes_configs_with_tiny_widths_on_nuscenes_scan(path, nuscenes_scan):
    _, boxes = forward_backward(tiny_widths(load_config(path)), nuscenes_scan)
    assert boxes.boxes.shape[1] == 9  # velocity


@pytest.mark.parametrize("name", ["pointpillars_tiny", "centerpoint_voxel_tiny"])
def test_empty_frames_give_no_detections_and_finite_loss(name):
    cfg = load_config(REPO / f"configs/synthetic/{name}.yaml")
    model = Detector.from_config(cfg)
    classes = tuple(cfg["dataset"]["class_names"])
    far = torch.tensor([[500.0, 0.0, 0.0, 0.5], [0.0, 0.0, 50.0, 0.5]])  # all outside the range
    frames = [Frame(PointCloud(torch.zeros(0, 4)), Boxes3D.empty(classes)),
              Frame(PointCloud(far), Boxes3D.empty(classes))]
    batch = collate(frames)
    model.train()
    loss = model(batch)
    assert torch.isfinite(loss.total)
    loss.total.backward()
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert [len(o) for o in out] == [0, 0]
    # an empty frame next to a real one: only the real one can have boxes, no crash
    pts = torch.rand(2000, 4) * torch.tensor([40.0, 40.0, 2.0, 1.0]) - torch.tensor([20.0, 20.0, 1.0, 0.0])
    mixed = collate([Frame(PointCloud(torch.zeros(0, 4)), Boxes3D.empty(classes)),
                     Frame(PointCloud(pts), Boxes3D.empty(classes))])
    with torch.no_grad():
        assert len(model(mixed)[0]) == 0


def test_missing_point_features_and_bad_configs_are_clear_errors():
    cfg = load_config(REPO / "configs/synthetic/pointpillars_tiny.yaml")
    model = Detector.from_config(cfg)
    batch = collate([Frame(PointCloud(torch.rand(10, 3), ("x", "y", "z")))])
    with pytest.raises(ValueError, match="intensity"):
        model(batch)

    def build(edit):
        bad = copy.deepcopy(cfg)
        edit(bad["model"])
        return Detector.from_config(bad)

    with pytest.raises(ValueError, match="feature_stride"):
        build(lambda m: m["head"].update(feature_stride=1))
    with pytest.raises(ValueError, match="Truck"):
        build(lambda m: m["head"].update(class_groups=[["Vehicle", "Truck"]]))
    with pytest.raises(ValueError, match="chanels"):
        build(lambda m: m["vfe"].update(chanels=[8]))
    with pytest.raises(ValueError, match="code_weights"):
        build(lambda m: m["head"]["loss_weights"].update(code_weights=[1.0] * 10))
    with pytest.raises(ValueError, match="unknown section"):
        build(lambda m: m.update(neck={}))
    with pytest.raises(ValueError, match="point_range"):
        build_detector({"voxelization": {"voxel_size": [0.32, 0.32, 6.0]}, "head": {}},
                       cfg["dataset"]["class_names"], cfg["dataset"]["point_features"])


def test_voxelize_and_forward_voxels_are_separable():
    cfg = load_config(REPO / "configs/synthetic/pointpillars_tiny.yaml")
    model = Detector.from_config(cfg).eval()
    pts = torch.rand(3000, 4) * torch.tensor([60.0, 60.0, 4.0, 1.0]) - torch.tensor([30.0, 30.0, 2.0, 0.0])
    batch = collate([Frame(PointCloud(pts))])
    voxelized = model.voxelize(batch)
    assert voxelized.coords.dtype == torch.int32 and voxelized.points.shape[1] == 4
    assert int(voxelized.point_voxel.max()) == voxelized.num_voxels - 1
    with torch.no_grad():
        preds = model.forward_voxels(voxelized)
        direct = model(batch)[0]
        staged = model.head.decode(preds)[0]
    assert len(preds) == 2 and preds[0].heatmap.shape == (1, 1, 160, 160)
    assert torch.equal(direct.boxes, staged.boxes)


def _run_infer(args):
    from pc3d.cli.infer import main  # tools/infer.py is a thin wrapper around it
    return main([str(a) for a in args])


def test_infer_tool_random_weights_checkpoint_and_errors(tmp_path, shared_data, capsys):
    scan = shared_data / "kitti/object/training/velodyne/000001.bin"
    config = REPO / "configs/synthetic/pointpillars_tiny.yaml"
    out = tmp_path / "boxes.json"
    assert _run_infer([config, "--points", scan, "--out", out]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"boxes", "config", "seconds"} and result["num_points"] == 120268
    for item in result["boxes"]:
        assert len(item["box"]) == 7 and item["label"] in ("Vehicle", "Pedestrian", "Cyclist")
        assert 0.1 < item["score"] <= 1.0
    # a checkpoint of a model reproduces its boxes exactly
    torch.manual_seed(3)
    model = Detector.from_config(load_config(config))
    ckpt = tmp_path / "model.pth"
    torch.save({"model": model.state_dict(), "epoch": 1}, ckpt)
    assert _run_infer([config, ckpt, "--points", scan, "--out", out, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model.eval()
    pts = np.fromfile(scan, np.float32).reshape(-1, 4)
    with torch.no_grad():
        expect = model(collate([Frame(PointCloud(pts))]))[0]
    assert printed["boxes"] == expect.to_json()
    # a checkpoint of another architecture: every mismatched key is named
    other = Detector.from_config(load_config(REPO / "configs/synthetic/flatformer_tiny.yaml"))
    torch.save({"model": other.state_dict()}, ckpt)
    with pytest.raises(ValueError, match="unexpected keys") as err:
        load_checkpoint(model, ckpt)
    assert "backbone_3d." in str(err.value)
    assert _run_infer([config, ckpt, "--points", scan]) == 2
    # a 5-feature config on a 4-column scan
    assert _run_infer([REPO / "configs/waymo/dsvt_pillar.yaml", "--points", scan]) == 2
    assert "elongation" in capsys.readouterr().err
