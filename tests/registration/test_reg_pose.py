"""Pose estimators: weighted SVD, LGR, Open3D RANSAC on correspondences."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pc3d.models.registration.pose import local_to_global_registration, ransac_correspondences, weighted_svd


def _rigid(seed):
    t = np.eye(4)
    t[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    t[:3, 3] = np.random.default_rng(seed).normal(size=3)
    return t


def test_weighted_svd_exact_and_ignores_zero_weight_outliers():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3))
    gt = _rigid(1)
    ref = src @ gt[:3, :3].T + gt[:3, 3]
    est = weighted_svd(torch.from_numpy(src), torch.from_numpy(ref)).numpy()
    np.testing.assert_allclose(est, gt, atol=1e-10)
    ref_bad = ref.copy()
    ref_bad[:20] += rng.normal(size=(20, 3)) * 5
    w = np.ones(50)
    w[:20] = 0
    est_w = weighted_svd(torch.from_numpy(src), torch.from_numpy(ref_bad), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(est_w, gt, atol=1e-10)
    assert np.linalg.det(est_w[:3, :3]) > 0


def test_weighted_svd_returns_rotation_for_reflected_input_and_batches():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(30, 3))
    ref = src * np.array([1, 1, -1])  # a reflection: best proper rotation has det +1
    est = weighted_svd(torch.from_numpy(src), torch.from_numpy(ref)).numpy()
    assert abs(np.linalg.det(est[:3, :3]) - 1) < 1e-9
    np.testing.assert_allclose(est[:3, :3] @ est[:3, :3].T, np.eye(3), atol=1e-9)
    gts = np.stack([_rigid(s) for s in (3, 4)])
    refs = np.stack([src @ g[:3, :3].T + g[:3, 3] for g in gts])
    batched = weighted_svd(torch.from_numpy(np.stack([src, src])), torch.from_numpy(refs)).numpy()
    np.testing.assert_allclose(batched, gts, atol=1e-10)
    zero = weighted_svd(torch.from_numpy(src), torch.from_numpy(src), torch.zeros(30, dtype=torch.float64))
    np.testing.assert_allclose(zero.numpy(), np.eye(4))
    with pytest.raises(ValueError):
        weighted_svd(torch.zeros(3, 3), torch.zeros(4, 3))


def _corrupted(seed, n=200, outlier_frac=0.6, noise=0.01):
    rng = np.random.default_rng(seed)
    src = rng.uniform(-2, 2, size=(n, 3))
    gt = _rigid(seed + 10)
    ref = src @ gt[:3, :3].T + gt[:3, 3] + noise * rng.normal(size=(n, 3))
    bad = rng.random(n) < outlier_frac
    ref[bad] = rng.uniform(-3, 3, size=(int(bad.sum()), 3))
    return src, ref, gt, bad


def test_lgr_recovers_pose_with_outliers():
    src, ref, gt, _ = _corrupted(5, outlier_frac=0.0)
    patch = np.arange(len(src)) // 10                      # 20 patches of 10
    rng = np.random.default_rng(6)
    bad = (patch % 3 != 0) | (rng.random(len(src)) < 0.1)  # 2/3 of the patches are all outliers, the rest 10%
    ref[bad] = rng.uniform(-3, 3, size=(int(bad.sum()), 3))
    t, inl = local_to_global_registration(torch.from_numpy(src), torch.from_numpy(ref), torch.ones(len(src), dtype=torch.float64),
                                          torch.from_numpy(patch), inlier_threshold=0.05)
    t = t.numpy()
    rre = np.degrees(np.arccos(np.clip((np.trace(t[:3, :3].T @ gt[:3, :3]) - 1) / 2, -1, 1)))
    assert rre < 1.0 and np.linalg.norm(t[:3, 3] - gt[:3, 3]) < 0.05
    assert inl.numpy()[~bad].mean() > 0.9 and inl.numpy()[bad].mean() < 0.05
    # plain SVD over everything fails on the same data: LGR is doing the work
    svd = weighted_svd(torch.from_numpy(src), torch.from_numpy(ref)).numpy()
    assert np.linalg.norm(svd[:3, 3] - gt[:3, 3]) > 0.1


def test_ransac_recovers_pose_with_outliers():
    src, ref, gt, bad = _corrupted(7)
    t, inl = ransac_correspondences(src, ref, distance_threshold=0.05, seed=0)
    rre = np.degrees(np.arccos(np.clip((np.trace(t[:3, :3].T @ gt[:3, :3]) - 1) / 2, -1, 1)))
    assert rre < 1.0 and np.linalg.norm(t[:3, 3] - gt[:3, 3]) < 0.05
    assert inl[~bad].mean() > 0.9
    t2, inl2 = ransac_correspondences(src[:2], ref[:2])
    np.testing.assert_allclose(t2, np.eye(4))


def test_lgr_hypotheses_are_ranked_and_lgr_takes_the_first():
    from pc3d.models.registration.pose import lgr_hypotheses
    src, ref, gt, _ = _corrupted(5, outlier_frac=0.0)
    patch = np.arange(len(src)) // 10
    rng = np.random.default_rng(8)
    bad = patch % 2 == 1                                   # every other patch is all outliers
    ref[bad] = rng.uniform(-3, 3, size=(int(bad.sum()), 3))
    args = (torch.from_numpy(src), torch.from_numpy(ref), torch.ones(len(src), dtype=torch.float64), torch.from_numpy(patch))
    hyps, counts = lgr_hypotheses(*args, inlier_threshold=0.05)
    assert hyps.shape == (len(np.unique(patch)), 4, 4)
    assert torch.all(counts[:-1] >= counts[1:])
    assert abs(int(counts[0]) - int((~bad).sum())) <= 3     # the best hypothesis explains the good patches
    best, _ = local_to_global_registration(*args, inlier_threshold=0.05)
    assert torch.allclose(best, hyps[0])
    assert np.linalg.norm(hyps[0].numpy()[:3, 3] - gt[:3, 3]) < 0.05
