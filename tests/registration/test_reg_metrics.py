"""3DMatch metrics against independent re-derivations."""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pc3d.evaluation.registration_metrics import (evaluate_pair, information_error, inlier_ratio, is_consecutive,
                                                  relative_rotation_error, relative_translation_error,
                                                  summarize_by_scene, transform_rmse)


def _transform(rotvec, t):
    out = np.eye(4)
    out[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    out[:3, 3] = t
    return out


def _reference_information_error(est, gt, info):
    """Independent re-derivation: quaternion from the matrix by the classic trace formula."""
    d = np.linalg.inv(gt) @ est
    r = d[:3, :3]
    w = 0.5 * math.sqrt(1 + r[0, 0] + r[1, 1] + r[2, 2])
    q = np.array([(r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w)])
    xi = np.concatenate([d[:3, 3], q])
    return xi @ info @ xi / info[0, 0]


def test_rre_rte_known_values():
    gt = _transform([0, 0, 0.3], [1, 2, 3])
    est = _transform([0, 0, 0.3 + np.radians(10)], [1, 2, 3.5])
    assert relative_rotation_error(est, gt) == pytest.approx(10.0, abs=1e-6)
    assert relative_translation_error(est, gt) == pytest.approx(0.5)
    assert relative_rotation_error(gt, gt) == pytest.approx(0.0, abs=1e-5)


def test_information_error_matches_reference_and_threshold(shared_data):
    from pc3d.data.threedmatch import read_gt_info, read_gt_log
    scene = shared_data / "3dmatch/benchmarks/3DMatch/7-scenes-redkitchen"
    logs, infos = read_gt_log(scene / "gt.log"), read_gt_info(scene / "gt.info")
    key = next(iter(infos))
    gt, info = logs[key], infos[key]
    np.testing.assert_allclose(info, info.T)
    assert information_error(gt, gt, info) == pytest.approx(0.0, abs=1e-12)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        est = gt @ _transform(rng.normal(size=3) * 0.05, rng.normal(size=3) * 0.1)
        assert information_error(est, gt, info) == pytest.approx(_reference_information_error(est, gt, info), rel=1e-9)
    # pure translation error of 0.2 m along x with the (isotropic translational) info block is the threshold
    shifted = gt @ _transform([0, 0, 0], [0.1, 0, 0])
    assert information_error(shifted, gt, info) == pytest.approx(0.01, rel=1e-9)
    assert evaluate_pair(shifted, gt, information=info)["rr_hit"]
    far = gt @ _transform([0, 0, 0], [0.25, 0, 0])
    assert not evaluate_pair(far, gt, information=info)["rr_hit"]


def test_inlier_ratio_and_rmse():
    rng = np.random.default_rng(0)
    gt = _transform([0.1, 0.2, 0.3], [0.5, 0, 0])
    src = rng.normal(size=(100, 3))
    ref = src @ gt[:3, :3].T + gt[:3, 3]
    ref[:30] += np.array([0.2, 0, 0])      # 0.2 m off: outliers at tau = 0.1
    ref[30:40] += np.array([0.05, 0, 0])   # inliers
    assert inlier_ratio(src, ref, gt) == pytest.approx(0.7)
    assert inlier_ratio(np.zeros((0, 3)), np.zeros((0, 3)), gt) == 0.0
    est = gt.copy()
    est[:3, 3] += [0, 0.1, 0]
    assert transform_rmse(est, gt, src) == pytest.approx(0.1)
    rec = evaluate_pair(est, gt, src_corr=src, ref_corr=ref, src_points=src)
    assert rec["fmr_hit"] and rec["rmse_hit"]
    with pytest.raises(ValueError):
        inlier_ratio(src, ref[:5], gt)
    with pytest.raises(ValueError):
        relative_rotation_error(np.eye(3), gt)
    with pytest.raises(ValueError):
        relative_rotation_error(np.full((4, 4), np.nan), gt)


def test_summary_averages_per_scene_then_over_scenes_and_skips_consecutive():
    assert is_consecutive(3, 4) and not is_consecutive(3, 5)
    recs = [  # scene a: 1/2 registered (consecutive pair ignored); scene b: 1/1
        {"scene": "a", "frag_i": 0, "frag_j": 1, "rr_hit": False, "rre": 0, "rte": 0, "inlier_ratio": 0.0, "fmr_hit": False},
        {"scene": "a", "frag_i": 0, "frag_j": 5, "rr_hit": True, "rre": 2.0, "rte": 0.1, "inlier_ratio": 0.5, "fmr_hit": True},
        {"scene": "a", "frag_i": 0, "frag_j": 7, "rr_hit": False, "rre": 90.0, "rte": 3.0, "inlier_ratio": 0.1, "fmr_hit": True},
        {"scene": "b", "frag_i": 2, "frag_j": 9, "rr_hit": True, "rre": 4.0, "rte": 0.3, "inlier_ratio": 0.2, "fmr_hit": True},
    ]
    s = summarize_by_scene(recs)
    assert s["scenes"]["a"]["registration_recall"] == pytest.approx(0.5)
    assert s["scenes"]["a"]["inlier_ratio"] == pytest.approx(0.2)
    assert s["scenes"]["a"]["rre"] == pytest.approx(2.0)
    assert s["mean"]["registration_recall"] == pytest.approx(0.75)
    assert s["mean"]["feature_matching_recall"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["mean"]["rre"] == pytest.approx(3.0)
    assert s["mean"]["num_pairs"] == 4
