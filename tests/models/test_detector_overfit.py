"""Overfitting: each tiny synthetic config, trained on one or two synthetic frames for a bounded number of
steps, drives its loss down by a large factor and decodes the ground-truth boxes back."""
import copy
from pathlib import Path

import pytest
import torch

from pc3d.config import load_config
from pc3d.data.synthetic.lidar import LidarConfig, simulate_frame
from pc3d.data.synthetic.scene import SceneConfig
from pc3d.models.detector import Detector
from pc3d.ops.box_geometry import box_iou_bev, count_points_in_boxes
from pc3d.structures import collate

REPO = Path(__file__).resolve().parents[2]
# A 64 x 64 m window keeps the BEV maps small enough for CPU training in a test.
RANGE = [-32.0, -32.0, -3.0, 32.0, 32.0, 3.0]




def _frames(num_frames: int):
    scene = SceneConfig(extent=28.0, num_vehicles=(3, 5), num_pedestrians=(2, 3), num_cyclists=(1, 2),
                        num_poles=(1, 2), num_trees=(0, 1), num_bushes=(0, 1), num_walls=(0, 0), buildings=False)
    lidar = LidarConfig(num_beams=32, vertical_fov_deg=(-20.0, 2.0), beam_spacing="uniform",
                        azimuth_resolution_deg=0.4, max_range=45.0, name="test32")
    frames = []
    for seed in range(num_frames):
        frame = simulate_frame(seed, scene, lidar)
        boxes = frame.gt_boxes
        inside = ((boxes.boxes[:, 0].abs() < 31.0) & (boxes.boxes[:, 1].abs() < 31.0)
                  & (count_points_in_boxes(frame.points.xyz, boxes.boxes) >= 5))
        frame.gt_boxes = boxes[inside]
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def two_frames():
    return _frames(2)


def overfit(config_name: str, frames, steps: int, lr: float = 4e-3):
    torch.manual_seed(0)
    cfg = load_config(REPO / f"configs/synthetic/{config_name}.yaml")
    cfg = copy.deepcopy(cfg)
    cfg["dataset"]["point_range"] = RANGE
    model = Detector.from_config(cfg).train()
    batch = collate(frames)
    voxelized = model.voxelize(batch)  # pre-processing has no parameters: do it once
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        parts = model.head.loss(model.forward_voxels(voxelized), batch.gt_boxes)
        total = sum(parts.values())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        losses.append(float(total.detach()))
    # Decode with the batch statistics the network was fitted with: BatchNorm's running averages
    # (momentum 0.01) lag far behind after a few dozen steps, which says nothing about the fit.
    with torch.no_grad():
        detections = model.decode(model.forward_voxels(voxelized), voxelized)
    return losses, detections


def _recall(detections, frames, iou=0.5):
    hits, total = 0, 0
    for det, frame in zip(detections, frames):
        gt = frame.gt_boxes
        total += len(gt)
        if len(det) and len(gt):
            overlap = box_iou_bev(det.boxes, gt.boxes)
            same_class = det.labels[:, None] == gt.labels[None, :]
            hits += int(((overlap >= iou) & same_class).any(dim=0).sum())
    return hits / max(total, 1)


def _check(losses, detections, frames, factor):
    assert losses[-1] < losses[0] / factor, f"loss {losses[0]:.2f} -> {losses[-1]:.2f}"
    recall = _recall(detections, frames)
    assert recall >= 0.7, f"only {recall:.0%} of the GT boxes decoded back (BEV IoU >= 0.5, same class)"
    # no flood of false positives either
    num_gt = sum(len(f.gt_boxes) for f in frames)
    assert sum(len(d) for d in detections) <= 3 * num_gt + 5


def test_pointpillars_tiny_overfits_one_frame(two_frames):
    frames = two_frames[:1]
    assert len(frames[0].gt_boxes) >= 4
    losses, detections = overfit("pointpillars_tiny", frames, steps=70)
    _check(losses, detections, frames, factor=20)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dsvt_pillar_tiny", "dsvt_voxel_tiny", "flatformer_tiny", "scatterformer_tiny",
                                  "sst_tiny", "centerpoint_voxel_tiny"])
def test_tiny_configs_overfit_two_frames(name, two_frames):
    losses, detections = overfit(name, two_frames, steps=150)
    _check(losses, detections, two_frames, factor=20)
