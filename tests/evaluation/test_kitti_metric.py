"""KITTI 3D / BEV AP (R40, R11) against OpenPCDet's kitti_object_eval_python, plus the devkit rules one by one."""
import json
from pathlib import Path

import numpy as np
import pytest

from pc3d.evaluation.kitti_metric import KittiFrameBoxes, format_kitti_metrics, kitti_metrics

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/reference/kitti_metric_openpcdet.json"


def _frame(rows, detections: bool, frame_id: str) -> KittiFrameBoxes:
    boxes = np.array([r["location"] + r["hwl"] + [r["rotation_y"]] for r in rows]).reshape(-1, 7)
    return KittiFrameBoxes([r["name"] for r in rows], boxes, np.array([r["bbox"] for r in rows]).reshape(-1, 4),
                           None if detections else [r["truncated"] for r in rows],
                           None if detections else [r["occluded"] for r in rows],
                           [r["score"] for r in rows] if detections else None, frame_id)


def test_matches_openpcdet_reference_numbers():
    """12 frames of real KITTI labels (DontCare, truncated, occluded, Truck, 2D heights under 25 px) with
    perturbed, duplicated, class-swapped and false detections: every 3D / BEV, R40 / R11, easy / moderate /
    hard AP equals the number OpenPCDet's evaluator printed for the same input (fixture records repo + commit)."""
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["source"]["commit"] == "8cacccec11db6f59bf6934600c9a175dae254806"
    gts = [_frame(f["gt"], False, f["frame_id"]) for f in fixture["frames"]]
    dts = [_frame(f["dt"], True, f["frame_id"]) for f in fixture["frames"]]
    ours = kitti_metrics(gts, dts, fixture["classes"])
    expected = fixture["expected"]
    assert len(expected) == 36 and set(expected) == set(ours)
    assert len({round(v, 3) for v in expected.values()}) > 15  # the fixture discriminates (not all 0 / 100)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-4), key
    assert "Car 3d_R40" in format_kitti_metrics(ours)


def _gt(names, boxes, heights=None, occluded=None, truncated=None):
    n = len(names)
    heights = [100.0] * n if heights is None else heights
    bbox = np.array([[100.0, 100.0, 150.0, 100.0 + h] for h in heights]).reshape(-1, 4)
    return KittiFrameBoxes(names, np.array(boxes, float).reshape(-1, 7), bbox, truncated, occluded)


def _det(names, boxes, scores, heights=None):
    n = len(names)
    heights = [100.0] * n if heights is None else heights
    bbox = np.array([[100.0, 100.0, 150.0, 100.0 + h] for h in heights]).reshape(-1, 4)
    return KittiFrameBoxes(names, np.array(boxes, float).reshape(-1, 7), bbox, scores=scores)


def _metrics(gt, dets, **kw):
    """The 41 recall samples assume many ground truths (with one, recall 1 sits at sample 0 and R40 is 0,
    in the reference too): repeat the frame 41 times."""
    return kitti_metrics([gt] * 41, [dets] * 41, **kw)


CAR = [2.0, 1.6, 20.0, 1.5, 1.7, 4.0, 0.3]
PED = [-3.0, 1.6, 15.0, 1.7, 0.6, 0.8, 0.0]


def test_perfect_detections_score_100_and_a_false_positive_lowers_ap():
    gt = _gt(["Car", "Pedestrian"], [CAR, PED])
    perfect = _metrics(gt, _det(["Car", "Pedestrian"], [CAR, PED], [0.9, 0.8]))
    assert perfect["kitti/Car/3d_R40/moderate"] == pytest.approx(100.0)
    assert perfect["kitti/Pedestrian/bev_R11/easy"] == pytest.approx(100.0)
    far = [30.0, 1.6, 40.0, 1.5, 1.7, 4.0, 0.0]
    worse = _metrics(gt, _det(["Car", "Car"], [CAR, far], [0.5, 0.9]))  # FP ranked above the TP
    assert 40.0 < worse["kitti/Car/3d_R40/moderate"] < 60.0
    assert worse["kitti/Cyclist/3d_R40/moderate"] == 0.0  # no valid ground truth: 0, as the reference


def test_van_ground_truth_is_ignored_for_car_and_dontcare_is_harmless():
    dontcare = [-1000.0, -1000.0, -1000.0, -1.0, -1.0, -1.0, -10.0]
    gt = _gt(["Car", "Van", "DontCare"], [CAR, [8.0, 1.6, 30.0, 2.0, 1.9, 5.0, 0.0], dontcare])
    dets = _det(["Car", "Car"], [CAR, [8.0, 1.6, 30.0, 2.0, 1.9, 5.0, 0.0]], [0.9, 0.95])
    m = _metrics(gt, dets)
    assert m["kitti/Car/3d_R40/moderate"] == pytest.approx(100.0)  # the Car on the Van is neither TP nor FP


def test_difficulty_rules_height_occlusion_and_small_detections():
    gt = _gt(["Car", "Car"], [CAR, [10.0, 1.6, 50.0, 1.5, 1.7, 4.0, 0.0]], heights=[100.0, 30.0], occluded=[0, 1])
    dets = _det(["Car"], [CAR], [0.9])
    m = _metrics(gt, dets)
    assert m["kitti/Car/3d_R40/easy"] == pytest.approx(100.0)  # 30 px / occluded car is not an easy miss
    assert m["kitti/Car/3d_R40/moderate"] < 100.0  # but it is a moderate miss
    tiny = _metrics(gt, _det(["Car", "Car"], [CAR, [-20.0, 1.6, 60.0, 1.5, 1.7, 4.0, 0.0]], [0.9, 0.95],
                                 heights=[100.0, 20.0]))
    assert tiny["kitti/Car/3d_R40/easy"] == pytest.approx(100.0)  # a 20 px detection is ignored, not a FP


def test_bad_input_is_refused():
    gt = _gt(["Car"], [CAR])
    with pytest.raises(ValueError, match="no scores"):
        kitti_metrics([gt], [_gt(["Car"], [CAR])])
    with pytest.raises(ValueError, match="1 ground-truth frames but 2"):
        kitti_metrics([gt], [_det([], [], []), _det([], [], [])])
    with pytest.raises(ValueError, match="Vehicle"):
        kitti_metrics([gt], [_det([], [], [])], classes=("Vehicle",))
    with pytest.raises(ValueError, match="NaN"):
        _gt(["Car"], [[np.nan] + CAR[1:]])
    with pytest.raises(ValueError, match=r"ground truth of frame '': box 1 .*not > 0"):
        _gt(["Car", "Car"], [CAR, CAR[:3] + [-1.5] + CAR[4:]])
    with pytest.raises(ValueError, match=r"detection of frame '': box 0 .*not > 0"):
        _det(["Car"], [CAR[:5] + [0.0, 0.3]], [0.5])
