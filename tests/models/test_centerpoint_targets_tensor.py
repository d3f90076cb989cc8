"""The tensor-op CenterPoint targets equal the per-box numpy construction they replaced, value for value.

`assign_targets_numpy` below is that construction (CenterPoint's: a Python loop over boxes drawing each Gaussian
into a numpy heatmap), kept here as the reference.
"""
import math

import numpy as np
import pytest
import torch

from pc3d.models.heads.targets import (BoxCoder, GroupTargets, MapGeometry, assign_targets, draw_gaussian,
                                       gaussian_radius, gaussian_radius_tensor)
from pc3d.structures import Boxes3D

NAMES = ("Vehicle", "Pedestrian", "Cyclist")
GEOM = MapGeometry((0.32, 0.32, 6.0), (-51.2, -51.2, -3.0, 51.2, 51.2, 3.0), 1, (320, 320))


def assign_targets_numpy(gt_boxes, class_groups, geometry, coder, min_radius=2, gaussian_overlap=0.1, max_objs=500):
    height, width = geometry.shape
    sx, sy = geometry.cell_size
    batch = len(gt_boxes)
    out = []
    for group in class_groups:
        group = list(group)
        heat = np.zeros((batch, len(group), height, width), np.float32)
        index = np.zeros((batch, max_objs), np.int64)
        mask = np.zeros((batch, max_objs), bool)
        codes = np.zeros((batch, max_objs, coder.code_size), np.float32)
        boxes_out = np.zeros((batch, max_objs, 7), np.float32)
        for b, gt in enumerate(gt_boxes):
            if gt is None or len(gt) == 0:
                continue
            boxes = gt.boxes.detach().cpu().numpy().astype(np.float64)
            labels = gt.labels.detach().cpu().numpy()
            keep = np.isin(labels, group) & np.isfinite(boxes[:, :7]).all(1) & (boxes[:, 3:6] > 0).all(1)
            boxes, labels = boxes[keep], labels[keep]
            with np.errstate(invalid="ignore"):
                cols, rows, box_codes = coder.encode(boxes, geometry)
            slot = 0
            for k in range(len(boxes)):
                col, row = int(cols[k]), int(rows[k])
                if not (0 <= col < width and 0 <= row < height) or slot >= max_objs:
                    continue
                radius = gaussian_radius(boxes[k, 4] / sy, boxes[k, 3] / sx, gaussian_overlap)
                radius = max(int(min_radius), int(radius))
                draw_gaussian(heat[b, group.index(int(labels[k]))], col, row, radius)
                index[b, slot] = row * width + col
                mask[b, slot] = True
                codes[b, slot] = box_codes[k]
                boxes_out[b, slot] = boxes[k, :7]
                slot += 1
        out.append(GroupTargets(*(torch.from_numpy(a) for a in (heat, index, mask, codes, boxes_out))))
    return out


def random_scene(rng, num, with_velocity, spread=60.0, dirty=False):
    boxes = np.column_stack([rng.uniform(-spread, spread, (num, 2)), rng.uniform(-2, 2, num),
                             rng.uniform(0.2, 14, (num, 3)), rng.uniform(-2 * math.pi, 2 * math.pi, num),
                             rng.normal(0, 5, (num, 2))]).astype(np.float32)
    if dirty and num > 6:  # non-finite and degenerate boxes, a NaN velocity, two boxes sharing a cell
        boxes[0, 0] = np.nan
        boxes[1, 3] = 0.0
        boxes[2, 6] = np.inf
        boxes[3, 7] = np.nan
        boxes[5, :2] = boxes[4, :2] + 0.01
    if not with_velocity:
        boxes = boxes[:, :7]
    return Boxes3D(torch.from_numpy(boxes), torch.from_numpy(rng.integers(0, 3, num)), NAMES)


def assert_targets_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for name in ("heatmap", "index", "mask", "codes", "boxes"):
            a, b = getattr(g, name).cpu(), getattr(w, name)
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert torch.equal(a, b), (name, (a != b).sum())


@pytest.mark.parametrize("with_velocity", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tensor_targets_equal_numpy_reference(seed, with_velocity):
    rng = np.random.default_rng(seed)
    gt = [random_scene(rng, 60, with_velocity, dirty=True), None, Boxes3D.empty(NAMES, with_velocity),
          random_scene(rng, 25, with_velocity, spread=20.0)]
    coder = BoxCoder(with_velocity)
    groups = [[0], [1, 2]] if seed % 2 else [[0, 1, 2]]
    kwargs = dict(min_radius=2 + seed % 2, gaussian_overlap=0.1, max_objs=30)  # max_objs below the box count: cut
    assert_targets_equal(assign_targets(gt, groups, GEOM, coder, **kwargs),
                         assign_targets_numpy(gt, groups, GEOM, coder, **kwargs))


def test_tensor_targets_equal_numpy_on_a_coarse_map_with_huge_radii():
    geom = MapGeometry((0.075, 0.075, 0.2), (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), 8, (180, 180))
    rng = np.random.default_rng(7)
    gt = [random_scene(rng, 40, False, spread=56.0), random_scene(rng, 3, False)]
    coder = BoxCoder(False)
    assert_targets_equal(assign_targets(gt, [[0, 1, 2]], geom, coder, min_radius=0),
                         assign_targets_numpy(gt, [[0, 1, 2]], geom, coder, min_radius=0))


def test_radius_tensor_equals_scalar_rule():
    # torch's vectorised float64 sqrt on the CPU is not always correctly rounded (1 ulp off in ~1% of these
    # cases; math.sqrt and CUDA's sqrt are exact), so the radii agree to 1e-13 and their whole cells exactly.
    rng = np.random.default_rng(3)
    h, w = rng.uniform(0.1, 80, 500), rng.uniform(0.1, 80, 500)
    got = gaussian_radius_tensor(torch.from_numpy(h), torch.from_numpy(w), 0.1).numpy()
    want = np.array([gaussian_radius(a, b, 0.1) for a, b in zip(h, w)])
    assert np.allclose(got, want, rtol=1e-13, atol=0)
    assert np.array_equal(np.trunc(got), np.trunc(want))


def test_targets_follow_the_requested_device_and_the_boxes_device():
    gt = [random_scene(np.random.default_rng(0), 5, False)]
    t = assign_targets(gt, [[0, 1, 2]], GEOM, BoxCoder(False), device="cpu")[0]
    assert t.heatmap.device.type == "cpu" and t.heatmap.shape == (1, 3, 320, 320)
    assert assign_targets([None], [[0]], GEOM, BoxCoder(False))[0].heatmap.sum() == 0
