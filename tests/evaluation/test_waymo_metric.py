"""Waymo AP / APH: hand-computed cases, official semantics, and a brute-force per-cut-off reference."""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from shapely.geometry import Polygon

from pc3d.evaluation.waymo_metric import (WaymoDetectionMetric, breakdown_name, default_score_cutoffs, heading_accuracy,
                                          mean_average_precision, paired_iou_3d, waymo_metrics)
from pc3d.structures import Boxes3D

CLASSES = ("Vehicle", "Pedestrian", "Cyclist")
VEH_L1, VEH_L2 = breakdown_name("VEHICLE", 1), breakdown_name("VEHICLE", 2)


def _shapely_iou_3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Private dense reference 3D IoU (shapely polygons), tests only."""
    def poly(box):
        c, s = np.cos(box[6]), np.sin(box[6])
        corners = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * box[3:5] / 2
        return Polygon(corners @ np.array([[c, s], [-s, c]]) + box[:2])
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            dz = min(p[2] + p[5] / 2, q[2] + q[5] / 2) - max(p[2] - p[5] / 2, q[2] - q[5] / 2)
            if dz <= 0:
                continue
            inter = poly(p).intersection(poly(q)).area * dz
            out[i, j] = inter / (np.prod(p[3:6]) + np.prod(q[3:6]) - inter)
    return out


def _vehicle(x, y=0.0, heading=0.0, length=4.0, width=2.0, height=1.5):
    return [x, y, height / 2, length, width, height, heading]


def _frame(pred_boxes, scores, gt_boxes, pred_labels=None, gt_labels=None, difficulty=None, num_points=None):
    pred_boxes = np.asarray(pred_boxes, np.float32).reshape(-1, 7)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 7)
    pl = np.zeros(len(pred_boxes), int) if pred_labels is None else np.asarray(pred_labels)
    gl = np.zeros(len(gt_boxes), int) if gt_labels is None else np.asarray(gt_labels)
    return (Boxes3D(pred_boxes, pl, CLASSES, scores=np.asarray(scores, np.float32)),
            Boxes3D(gt_boxes, gl, CLASSES, difficulty=difficulty, num_points=num_points))


def _random_gt(rng, n):
    boxes = np.zeros((n, 7))
    boxes[:, :2] = rng.uniform(-40, 40, (n, 2))
    boxes[:, 3:6] = [4.5, 2.0, 1.6]
    boxes[:, 2] = 0.8
    boxes[:, 6] = rng.uniform(-np.pi, np.pi, n)
    return boxes


def test_perfect_predictions_give_one():
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for _ in range(4):
        g = _random_gt(rng, 12)
        labels = rng.integers(0, 3, 12)
        p, t = _frame(g, rng.uniform(0.1, 1.0, 12), g, labels, labels, num_points=rng.integers(1, 50, 12))
        preds.append(p), gts.append(t)
    result = waymo_metrics(preds, gts, CLASSES)
    assert list(result) == [f"{breakdown_name(t, l)}/{m}" for t in ("VEHICLE", "PEDESTRIAN", "CYCLIST")
                            for l in (1, 2) for m in ("AP", "APH")]
    for value in result.values():
        assert value == pytest.approx(1.0, abs=1e-6)


def test_shifted_box_is_a_miss_at_iou_07():
    # length 4 shifted by 1 m: IoU = 3 / 5 = 0.6 < 0.7 for a vehicle, but >= 0.5 for a pedestrian
    veh = waymo_metrics(*map(list, zip(_frame([_vehicle(1.0)], [0.9], [_vehicle(0.0)]))), CLASSES)
    assert veh[f"{VEH_L1}/AP"] == 0.0 and veh[f"{VEH_L2}/APH"] == 0.0
    ped = waymo_metrics(*map(list, zip(_frame([_vehicle(1.0)], [0.9], [_vehicle(0.0)], [1], [1]))), CLASSES)
    assert ped[f"{breakdown_name('PEDESTRIAN', 1)}/AP"] == pytest.approx(1.0, abs=1e-6)
    # a 0.5 m shift keeps IoU = 3.5 / 4.5 = 0.78 >= 0.7
    near = waymo_metrics(*map(list, zip(_frame([_vehicle(0.5)], [0.9], [_vehicle(0.0)]))), CLASSES)
    assert near[f"{VEH_L1}/AP"] == pytest.approx(1.0, abs=1e-6)


def test_flipped_heading_ap_one_aph_zero():
    result = waymo_metrics(*map(list, zip(_frame([_vehicle(0.0, heading=0.3 + np.pi)], [0.9], [_vehicle(0.0, heading=0.3)]))),
                           CLASSES)
    assert result[f"{VEH_L1}/AP"] == pytest.approx(1.0, abs=1e-6)
    assert result[f"{VEH_L1}/APH"] == pytest.approx(0.0, abs=1e-6)
    half = waymo_metrics(*map(list, zip(_frame([_vehicle(0.0, heading=np.pi / 2, length=2.0)], [0.9],
                                               [_vehicle(0.0, heading=0.0, length=2.0)]))), CLASSES)
    assert half[f"{VEH_L1}/APH"] == pytest.approx(0.5, abs=1e-6)


def test_hand_computed_pr_curve():
    """g1, g2 (g2 LEVEL_2); p1 (0.95) hits g1, p2 (0.85) is a false positive, p3 (0.75) hits g2.

    LEVEL_2 points (recall, precision): cut <= .75 -> (1, 2/3); (.75, .85] -> (.5, .5);
    (.85, .95] -> (.5, 1); above -> (0, 1). Envelope: 2/3 on (0.5, 1], 1 on [0, 0.5]; with the
    0.05 interpolation steps: AP = 0.45 * 2/3 + 0.05 * (2/3 + 1) / 2 + 0.5 * 1 = 0.841667.
    LEVEL_1 never counts g2 as missed, but p3's hit on it is still a TP: recall is 1 at every
    non-empty cut-off, precision reaches 1 -> AP = 1.
    """
    pred, gt = _frame([_vehicle(0.0), _vehicle(30.0), _vehicle(60.0)], [0.95, 0.85, 0.75],
                      [_vehicle(0.0), _vehicle(60.0)], difficulty=[1, 2], num_points=[50, 50])
    metric = WaymoDetectionMetric(CLASSES)
    metric.update(pred, gt)
    curve = metric.curves()[VEH_L2]
    cut = default_score_cutoffs()
    low, mid, high, top = cut <= 0.75, (cut > 0.75) & (cut <= 0.85), (cut > 0.85) & (cut <= 0.95), cut > 0.95
    np.testing.assert_array_equal(curve["tp"][low], 2), np.testing.assert_array_equal(curve["fp"][low], 1)
    np.testing.assert_array_equal(curve["tp"][mid], 1), np.testing.assert_array_equal(curve["fn"][mid], 1)
    np.testing.assert_allclose(curve["precision"][high], 1.0), np.testing.assert_allclose(curve["recall"][high], 0.5)
    np.testing.assert_allclose(curve["precision"][top], 1.0), np.testing.assert_allclose(curve["recall"][top], 0.0)
    result = metric.compute()
    assert result[f"{VEH_L2}/AP"] == pytest.approx(0.841667, abs=1e-5)
    assert result[f"{VEH_L1}/AP"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(metric.curves()[VEH_L1]["recall"][~top], 1.0)


def test_mean_average_precision_by_hand():
    assert mean_average_precision([1.0], [1.0]) == pytest.approx(1.0)
    # one point (recall 0.5, precision 1): envelope 1 on [0, 0.5], nothing beyond the max recall
    assert mean_average_precision([1.0], [0.5]) == pytest.approx(0.5)
    # (1, 0.5): precision 0.5 everywhere (the recall-0 point takes its neighbour's precision)
    assert mean_average_precision([0.5], [1.0]) == pytest.approx(0.5)
    # no recall at all
    assert mean_average_precision([1.0, 1.0], [0.0, 0.0]) == 0.0
    assert mean_average_precision([], []) == 0.0
    with pytest.raises(ValueError, match="recall_delta"):
        mean_average_precision([1.0], [1.0], recall_delta=0.0)


def test_ground_truth_without_points_is_ignored():
    """The official tool drops ground truths with 0 points: a prediction on one is a false positive."""
    pred, gt = _frame([_vehicle(0.0), _vehicle(30.0)], [0.9, 0.95], [_vehicle(0.0), _vehicle(30.0)], num_points=[40, 0])
    result = waymo_metrics([pred], [gt], CLASSES)
    # cut <= .9: TP 1, FP 1 -> (1, .5); (.9, .95]: TP 0 -> (0, 1). AP = 0.5
    assert result[f"{VEH_L2}/AP"] == pytest.approx(0.5, abs=1e-6)
    counted = waymo_metrics([pred], [Boxes3D(gt.boxes, gt.labels, CLASSES)], CLASSES)   # no num_points: all count
    assert counted[f"{VEH_L2}/AP"] == pytest.approx(1.0, abs=1e-6)


def test_difficulty_from_point_count():
    pred, gt = _frame([_vehicle(0.0)], [0.9], [_vehicle(0.0), _vehicle(40.0)], num_points=[100, 3])
    result = waymo_metrics([pred], [gt], CLASSES)
    assert result[f"{VEH_L1}/AP"] == pytest.approx(1.0, abs=1e-6)     # the 3-point miss is LEVEL_2
    assert result[f"{VEH_L2}/AP"] == pytest.approx(0.5, abs=1e-6)


def test_hungarian_beats_greedy():
    """p1 overlaps g1 (0.86) and g2 (0.90); p2 overlaps only g2 (0.82). Greedy by IoU would take p1-g2
    and leave p2 and g1 unmatched; max-sum matching takes p1-g1 and p2-g2."""
    pred, gt = _frame([_vehicle(0.3), _vehicle(0.9)], [0.9, 0.8], [_vehicle(0.0), _vehicle(0.5)], num_points=[50, 50])
    iou = _shapely_iou_3d(pred.boxes.numpy(), gt.boxes.numpy())
    assert iou[0, 1] > iou[0, 0] > 0.7 and iou[1, 1] > 0.7 > iou[1, 0]
    metric = WaymoDetectionMetric(CLASSES)
    metric.update(pred, gt)
    curve = metric.curves()[VEH_L2]
    cut = default_score_cutoffs()
    assert (curve["tp"][cut <= 0.8] == 2).all() and (curve["fn"][cut <= 0.8] == 0).all()
    assert (curve["tp"][(cut > 0.8) & (cut <= 0.9)] == 1).all()
    assert metric.compute()[f"{VEH_L2}/AP"] == pytest.approx(1.0, abs=1e-6)


def test_classes_are_matched_separately_and_sign_optional():
    pred, gt = _frame([_vehicle(0.0)], [0.9], [_vehicle(0.0)], pred_labels=[1], gt_labels=[0])
    result = waymo_metrics([pred], [gt], CLASSES)
    assert result[f"{VEH_L1}/AP"] == 0.0 and result[f"{breakdown_name('PEDESTRIAN', 1)}/AP"] == 0.0
    signs = Boxes3D(torch.tensor([_vehicle(0.0)]), [0], ("Sign",), scores=torch.tensor([0.5]))
    gt_signs = Boxes3D(torch.tensor([_vehicle(0.0)]), [0], ("Sign",))
    with_sign = waymo_metrics([signs], [gt_signs], ("Vehicle", "Sign"))
    assert list(with_sign) == [f"{VEH_L1}/AP", f"{VEH_L1}/APH", f"{VEH_L2}/AP", f"{VEH_L2}/APH",
                               "OBJECT_TYPE_TYPE_SIGN_LEVEL_1/AP", "OBJECT_TYPE_TYPE_SIGN_LEVEL_1/APH",
                               "OBJECT_TYPE_TYPE_SIGN_LEVEL_2/AP", "OBJECT_TYPE_TYPE_SIGN_LEVEL_2/APH"]
    assert with_sign["OBJECT_TYPE_TYPE_SIGN_LEVEL_1/AP"] == pytest.approx(1.0, abs=1e-6)


def test_bad_input():
    pred, gt = _frame([_vehicle(0.0)], [0.9], [_vehicle(0.0)])
    with pytest.raises(ValueError, match="frames"):
        waymo_metrics([pred], [], CLASSES)
    with pytest.raises(ValueError, match="scores is required"):
        waymo_metrics([Boxes3D(pred.boxes, pred.labels, CLASSES)], [gt], CLASSES)
    with pytest.raises(ValueError, match="NaN"):
        waymo_metrics([Boxes3D(pred.boxes * float("nan"), pred.labels, CLASSES, pred.scores)], [gt], CLASSES)
    with pytest.raises(ValueError, match="scores contain NaN"):
        waymo_metrics([Boxes3D(pred.boxes, pred.labels, CLASSES, torch.tensor([float("nan")]))], [gt], CLASSES)
    with pytest.raises(TypeError, match="Boxes3D"):
        waymo_metrics([pred.boxes], [gt], CLASSES)
    with pytest.raises(ValueError, match="not a Waymo class"):
        waymo_metrics([pred], [gt], ("Truck",))
    empty = waymo_metrics([Boxes3D.empty(CLASSES, with_scores=True)], [Boxes3D.empty(CLASSES)], CLASSES)
    assert all(v == 0.0 for v in empty.values())


def test_paired_iou_matches_shapely_and_ops():
    rng = np.random.default_rng(3)
    n = 300
    a = np.c_[rng.uniform(-2, 2, (n, 3)), rng.uniform(0.3, 5, (n, 3)), rng.uniform(-4, 4, n)]
    b = np.c_[rng.uniform(-2, 2, (n, 3)), rng.uniform(0.3, 5, (n, 3)), rng.uniform(-4, 4, n)]
    a[:, :2] += 3000.0                     # far from the origin: still exact
    b[:, :2] += 3000.0
    ours = paired_iou_3d(a, b)
    ref = np.array([_shapely_iou_3d(a[i:i + 1], b[i:i + 1])[0, 0] for i in range(n)])
    np.testing.assert_allclose(ours, ref, atol=1e-7)
    assert (ours > 0).mean() > 0.3
    np.testing.assert_allclose(paired_iou_3d(a, a), 1.0)
    try:
        from pc3d.ops.box_geometry import box_iou_3d
    except ImportError:
        return
    np.testing.assert_allclose(ours, np.diag(box_iou_3d(a, b)), atol=1e-7)


def _brute_force_counts(frames, iou_threshold, cutoffs):
    """Per cut-off: full Hungarian over every (pd, gt) of the frame (dense shapely IoU), no shortcuts."""
    tp = np.zeros(len(cutoffs), int)
    fp = np.zeros(len(cutoffs), int)
    fn = np.zeros((2, len(cutoffs)), int)
    sum_ha = np.zeros(len(cutoffs))
    for pd, scores, gt, difficulty in frames:
        iou = _shapely_iou_3d(pd, gt) if len(pd) and len(gt) else np.zeros((len(pd), len(gt)))
        for c, cut in enumerate(cutoffs):
            active = np.nonzero(scores >= cut)[0]
            weight = np.where(iou[active] >= np.float32(iou_threshold), np.round(iou[active] * 1e6), 0)
            if weight.size:
                rows, cols = linear_sum_assignment(weight, maximize=True)
            else:
                rows, cols = np.zeros(0, int), np.zeros(0, int)
            ok = weight[rows, cols] > 0
            matched_rows, matched_cols = rows[ok], cols[ok]
            tp[c] += ok.sum()
            fp[c] += len(active) - ok.sum()
            sum_ha[c] += heading_accuracy(pd[active[matched_rows], 6], gt[matched_cols, 6]).sum()
            unmatched = np.setdiff1d(np.arange(len(gt)), matched_cols)
            fn[0, c] += (difficulty[unmatched] <= 1).sum()
            fn[1, c] += len(unmatched)
    return tp, fp, fn, sum_ha


def test_against_brute_force_reference():
    """Crowded random frames (many multi-edge components) vs a per-cut-off full Hungarian."""
    rng = np.random.default_rng(11)
    cutoffs = np.float32([0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 0.9, 1.0])
    frames, preds, gts = [], [], []
    for _ in range(6):
        m = rng.integers(3, 9)
        gt = np.zeros((m, 7))
        gt[:, :2] = rng.uniform(-4, 4, (m, 2))              # crowded: boxes overlap each other
        gt[:, 3:6] = [1.0, 0.9, 1.8]
        gt[:, 2] = 0.9
        gt[:, 6] = rng.uniform(-np.pi, np.pi, m)
        src = rng.integers(0, m, rng.integers(2, 14))
        pd = gt[src] + np.c_[rng.normal(0, 0.12, (len(src), 3)), rng.normal(0, 0.05, (len(src), 3)),
                             rng.normal(0, 0.6, len(src))]
        scores = rng.choice([0.1, 0.3, 0.45, 0.55, 0.7, 0.85, 0.95], len(src)).astype(np.float32)
        difficulty = rng.integers(1, 3, m)
        frames.append((pd, scores, gt, difficulty))
        preds.append(Boxes3D(pd.astype(np.float32), np.ones(len(src), int), CLASSES, scores))
        gts.append(Boxes3D(gt.astype(np.float32), np.ones(m, int), CLASSES, difficulty=difficulty))
    frames = [(p.boxes.numpy().astype(np.float64), s, g.boxes.numpy().astype(np.float64), d)
              for p, (_, s, _, d), g in zip(preds, frames, gts)]
    tp, fp, fn, sum_ha = _brute_force_counts(frames, 0.5, cutoffs)
    metric = WaymoDetectionMetric(CLASSES, score_cutoffs=cutoffs)
    solved = []
    solve = metric._solve_components
    metric._solve_components = lambda acc, rows, *rest: (solved.append(len(rows)), solve(acc, rows, *rest))
    for p, g in zip(preds, gts):
        metric.update(p, g)
    assert sum(solved) >= 10          # the general (multi-edge component) path really ran
    for level in (1, 2):
        curve = metric.curves()[breakdown_name("PEDESTRIAN", level)]
        np.testing.assert_array_equal(curve["tp"], tp)
        np.testing.assert_array_equal(curve["fp"], fp)
        np.testing.assert_array_equal(curve["fn"], fn[level - 1])
        np.testing.assert_allclose(curve["sum_ha"], sum_ha, atol=1e-9)
    assert 0 < tp[0] < fp[0] + tp[0]
    # the dense ops IoU (or the shapely fallback) as iou_fn gives the same result as the paired kernel
    try:
        from pc3d.ops.box_geometry import box_iou_3d as dense
    except ImportError:
        dense = _shapely_iou_3d
    assert (waymo_metrics(preds, gts, CLASSES, iou_fn=dense) == waymo_metrics(preds, gts, CLASSES))
