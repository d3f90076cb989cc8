"""CenterPoint targets, losses and decoding, checked against hand-computed values and brute force."""
import math

import numpy as np
import pytest
import torch

from pc3d.models.heads.centerpoint import CenterPointHead, HeadPrediction
from pc3d.models.heads.decode import DecodeConfig
from pc3d.models.heads.losses import gaussian_focal_loss, masked_l1_loss
from pc3d.models.heads.targets import (BoxCoder, MapGeometry, assign_targets, draw_gaussian, gaussian_kernel,
                                       gaussian_radius)
from pc3d.ops.box_geometry import box_iou_bev
from pc3d.structures import Boxes3D

NAMES = ("Vehicle", "Pedestrian", "Cyclist")
GEOM = MapGeometry((0.32, 0.32, 6.0), (-51.2, -51.2, -3.0, 51.2, 51.2, 3.0), 1, (320, 320))


def test_gaussian_radius_matches_hand_computed_centerpoint_rule():
    # h = w = 10 cells, overlap 0.1: r1 = 14.264, r2 = 26.325, r3 = (-4 + sqrt(16 + 144)) / 2 = 4.3246
    assert gaussian_radius(10, 10, 0.1) == pytest.approx((-4 + math.sqrt(160)) / 2, rel=1e-9)
    # symmetric in height / width and growing with the box
    assert gaussian_radius(4, 12, 0.1) == pytest.approx(gaussian_radius(12, 4, 0.1))
    assert gaussian_radius(20, 20, 0.1) > gaussian_radius(10, 10, 0.1)


def test_gaussian_kernel_and_drawing_at_the_border():
    k = gaussian_kernel(2)
    sigma = 5 / 6
    assert k.shape == (5, 5) and k[2, 2] == 1.0
    assert k[2, 4] == pytest.approx(math.exp(-4 / (2 * sigma * sigma)))
    heat = np.zeros((6, 6), np.float32)
    draw_gaussian(heat, 0, 0, 2)  # corner: only the in-map quarter is written
    assert heat[0, 0] == 1.0 and heat[2, 2] == pytest.approx(k[4, 4]) and heat[3:, :].sum() == 0
    draw_gaussian(heat, 0, 0, 2)  # max-blend, not sum
    assert heat.max() == 1.0


def test_target_peak_at_centre_cell_with_centerpoint_radius():
    box = [10.05, -4.9, 0.3, 4.5, 2.0, 1.6, 0.4]
    gt = Boxes3D(torch.tensor([box, [-20.0, 30.0, 0.0, 0.8, 0.7, 1.8, 0.0]]), torch.tensor([0, 1]), NAMES)
    coder = BoxCoder(with_velocity=False)
    targets = assign_targets([gt], [[0], [1, 2]], GEOM, coder, min_radius=2, gaussian_overlap=0.1)
    heat = targets[0].heatmap[0, 0].numpy()
    col, row = int((10.05 + 51.2) // 0.32), int((-4.9 + 51.2) // 0.32)
    assert heat[row, col] == 1.0 and (heat == 1.0).sum() == 1
    radius = max(2, int(gaussian_radius(2.0 / 0.32, 4.5 / 0.32, 0.1)))
    rows, cols = np.nonzero(heat)
    assert rows.max() - row == radius and row - rows.min() == radius
    assert cols.max() - col == radius and col - cols.min() == radius
    # regression target at that cell, slot 0
    assert targets[0].mask[0].sum() == 1 and targets[0].index[0, 0] == row * 320 + col
    code = targets[0].codes[0, 0].numpy()
    assert code[0] == pytest.approx((10.05 + 51.2) / 0.32 - col, abs=1e-5)
    assert code[3:6] == pytest.approx(np.log([4.5, 2.0, 1.6]), abs=1e-6)
    assert code[6:8] == pytest.approx([math.sin(0.4), math.cos(0.4)], abs=1e-6)
    # the pedestrian goes to group 1 channel 0 with the minimum radius; cyclist channel stays empty
    ped = targets[1].heatmap[0]
    assert ped[0].max() == 1.0 and ped[1].max() == 0.0
    assert (ped[0] > 0).sum() == (2 * 2 + 1) ** 2 - 4 * 0  # radius-2 disc of a 5x5 kernel, all > 0
    assert targets[1].mask[0].sum() == 1


def test_boxes_outside_the_map_and_empty_samples_are_ignored():
    gt = Boxes3D(torch.tensor([[60.0, 0, 0, 4, 2, 1.5, 0]]), torch.tensor([0]), NAMES)
    targets = assign_targets([gt, Boxes3D.empty(NAMES), None], [[0, 1, 2]], GEOM, BoxCoder(False))
    assert targets[0].heatmap.sum() == 0 and not targets[0].mask.any()
    assert targets[0].heatmap.shape == (3, 3, 320, 320)


@pytest.mark.parametrize("with_velocity", [False, True])
def test_encode_decode_round_trip(with_velocity):
    rng = np.random.default_rng(0)
    m = 200
    boxes = np.column_stack([rng.uniform(-51, 51, (m, 2)), rng.uniform(-2, 2, m), rng.uniform(0.3, 12, (m, 3)),
                             rng.uniform(-math.pi, math.pi, m), rng.normal(0, 5, (m, 2))])
    if not with_velocity:
        boxes = boxes[:, :7]
    coder = BoxCoder(with_velocity)
    cols, rows, codes = coder.encode(boxes, GEOM)
    decoded = coder.decode(torch.from_numpy(codes), torch.from_numpy(cols), torch.from_numpy(rows), GEOM).double()
    ref = torch.from_numpy(boxes)
    assert torch.allclose(decoded[:, :6], ref[:, :6], atol=2e-4)
    dh = torch.remainder(decoded[:, 6] - ref[:, 6] + math.pi, 2 * math.pi) - math.pi
    assert dh.abs().max() < 1e-5
    if with_velocity:
        assert torch.allclose(decoded[:, 7:], ref[:, 7:], atol=1e-5)


def _brute_focal(logits, target):
    p = 1 / (1 + np.exp(-logits))
    p = np.clip(p, 1e-4, 1 - 1e-4)
    pos = target == 1
    loss = -(np.log(p) * (1 - p) ** 2)[pos].sum() - (np.log(1 - p) * p ** 2 * (1 - target) ** 4)[~pos].sum()
    return loss / max(pos.sum(), 1)


def test_focal_and_l1_losses_match_brute_force():
    rng = np.random.default_rng(1)
    target = rng.uniform(0, 0.9, (2, 3, 8, 8)).astype(np.float32)
    target[0, 1, 3, 4] = target[1, 2, 0, 0] = 1.0
    logits = rng.normal(0, 2, target.shape).astype(np.float32)
    got = gaussian_focal_loss(torch.from_numpy(logits), torch.from_numpy(target))
    assert float(got) == pytest.approx(_brute_focal(logits.astype(np.float64), target), rel=1e-4)
    pred, tgt = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    w = torch.arange(1, 9, dtype=torch.float32)
    expect = ((pred - tgt).abs() * w)[mask].sum() / 3
    assert float(masked_l1_loss(pred, tgt, mask, w)) == pytest.approx(float(expect), rel=1e-6)


def _oracle_prediction(head, targets, with_velocity):
    """Head outputs that equal the targets: logit +10 at peaks, -10 elsewhere, codes at the GT cells."""
    preds = []
    for t in targets:
        b, k, h, w = t.heatmap.shape
        heat = torch.where(t.heatmap == 1, 10.0, -10.0)
        code_map = torch.zeros(b, head.coder.code_size, h * w)
        for s in range(b):
            idx = t.index[s][t.mask[s]]
            code_map[s][:, idx] = t.codes[s][t.mask[s]].t()
        code_map = code_map.view(b, -1, h, w)
        preds.append(HeadPrediction(heat, code_map[:, 0:2], code_map[:, 2:3], code_map[:, 3:6], code_map[:, 6:8],
                                    code_map[:, 8:10] if with_velocity else None))
    return preds


@pytest.mark.parametrize("nms", ["rotated", "circle", "none"])
def test_decode_of_perfect_prediction_returns_the_gt_boxes(nms):
    gt = Boxes3D(torch.tensor([[10.0, 5.0, 0.2, 4.2, 1.9, 1.5, 0.3], [12.0, -5.0, 0.1, 4.0, 1.8, 1.4, -2.5],
                               [-7.3, 2.1, -0.4, 0.8, 0.7, 1.8, 1.0], [30.1, 30.2, 0.0, 1.8, 0.6, 1.6, 3.0]]),
                 torch.tensor([0, 0, 1, 2]), NAMES)
    head = CenterPointHead(8, NAMES, [["Vehicle"], ["Pedestrian", "Cyclist"]], GEOM.voxel_size, GEOM.point_range,
                           decode={"score_threshold": 0.5, "nms": {"type": nms}})
    targets = assign_targets([gt], head.class_groups, GEOM, head.coder)
    out = head.decode(_oracle_prediction(head, targets, False))[0]
    assert len(out) == 4 and sorted(out.labels.tolist()) == [0, 0, 1, 2]
    iou = box_iou_bev(out.boxes, gt.boxes)
    best = iou.max(dim=1)
    assert (best.values > 0.99).all()
    assert torch.equal(out.labels, gt.labels[best.indices])
    assert (out.scores > 0.99).all()


def test_decode_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="nms.type"):
        DecodeConfig.from_dict({"nms": {"type": "soft"}})
    with pytest.raises(ValueError, match="unknown options"):
        DecodeConfig.from_dict({"score_thresh": 0.1})


def test_velocity_head_needs_velocity_boxes():
    gt = Boxes3D(torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.0]]), torch.tensor([0]), NAMES)
    with pytest.raises(ValueError, match="velocity"):
        assign_targets([gt], [[0]], GEOM, BoxCoder(with_velocity=True))
    gt9 = Boxes3D(torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.0, 3.0, -1.0]]), torch.tensor([0]), NAMES)
    t = assign_targets([gt9], [[0]], GEOM, BoxCoder(with_velocity=True))[0]
    assert t.codes[0, 0, 8:].tolist() == [3.0, -1.0]
