"""Coarse-to-fine point-to-plane ICP shared by the registration methods."""
import numpy as np
import pytest

from pc3d.evaluation.registration_metrics import relative_rotation_error, relative_translation_error, transform_rmse
from pc3d.models.registration.pose import distinct_poses
from pc3d.models.registration.refine import downsample_with_normals, refine_icp, verify_hypotheses

pytest.importorskip("open3d")


def _perturbed(transform, degrees, offset, seed=0):
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    delta = np.eye(4)
    delta[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    delta[:3, 3] = offset
    return delta @ transform


@pytest.fixture(scope="module")
def room_pair():
    from pc3d.data.synthetic.registration_pairs import make_registration_pair
    return make_registration_pair(100000, overlap="high")


def test_schedule_recovers_a_pose_a_tight_icp_cannot(room_pair):
    """A pose 12 degrees / 0.3 m off (RMSE 0.35 m, a failed registration) is pulled back under 2 cm by the
    10 -> 5 -> 2 cm schedule; the single 2 cm stage of Open3D's tutorial does not move it."""
    src, ref, gt = room_pair.src_points.astype(np.float64), room_pair.ref_points.astype(np.float64), room_pair.transform
    start = _perturbed(gt, 12.0, [0.25, -0.15, 0.1])
    assert transform_rmse(start, gt, src) > 0.3
    refined, fitness = refine_icp(src, ref, start, voxel_size=0.05)
    assert 0 < fitness <= 1
    assert relative_translation_error(refined, gt) < 0.02 and relative_rotation_error(refined, gt) < 0.5
    tight, _ = refine_icp(src, ref, start, voxel_size=0.05, schedule=(0.4,))
    assert transform_rmse(tight, gt, src) > 0.3


def test_refine_accepts_prepared_clouds_and_rejects_bad_voxel(room_pair):
    src = downsample_with_normals(room_pair.src_points, 0.05)
    ref = downsample_with_normals(room_pair.ref_points, 0.05)
    assert src.has_normals() and len(src.points) < len(room_pair.src_points)
    refined, _ = refine_icp(src, ref, room_pair.transform, voxel_size=0.05)
    assert relative_translation_error(refined, room_pair.transform) < 0.02
    with pytest.raises(ValueError, match="voxel_size"):
        refine_icp(src, ref, room_pair.transform, voxel_size=0.0)
    far = np.eye(4)
    far[:3, 3] = 100.0  # no correspondence at any stage: the input pose comes back unchanged
    unchanged, fitness = refine_icp(src, ref, far, voxel_size=0.05)
    assert fitness == 0.0 and np.array_equal(unchanged, far)


def test_roitr_registration_with_icp(room_pair):
    from pc3d.models.registration.roitr import RoITrRegistration
    plain = RoITrRegistration.from_checkpoint(pose="lgr", icp=False)
    refined = RoITrRegistration(plain.model, pose="lgr", verify=1)
    verified = RoITrRegistration(plain.model, pose="lgr")  # the default: ICP-verified among 8 hypotheses
    assert (plain.name, refined.name, verified.name) == ("roitr_lgr", "roitr_lgr_icp", "roitr_lgr_verify")
    a = plain.register(room_pair.src_points, room_pair.ref_points)
    b = refined.register(room_pair.src_points, room_pair.ref_points)
    c = verified.register(room_pair.src_points, room_pair.ref_points)
    assert "icp_fitness" in b.extra and "icp_fitness" not in a.extra and "num_hypotheses" not in b.extra
    assert 2 <= c.extra["num_hypotheses"] <= 8 and 0 <= c.extra["hypothesis"] < c.extra["num_hypotheses"]
    # hypotheses come from every mutual match (RoITr.verification_hypotheses); on this pair the winner fits at least
    # as well as the single refined LGR pose
    assert c.extra["icp_fitness"] >= b.extra["icp_fitness"] - 1e-9
    assert np.array_equal(a.correspondences, b.correspondences) and np.array_equal(a.correspondences, c.correspondences)
    with pytest.raises(ValueError, match="voxel_size"):
        RoITrRegistration(plain.model, icp=True, voxel_size=-1)
    with pytest.raises(ValueError, match="verify"):
        RoITrRegistration(plain.model, verify=-1)


def _rotation_z(degrees, offset):
    t = np.eye(4)
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    t[:2, :2] = [[c, -s], [s, c]]
    t[:3, 3] = offset
    return t


def test_verify_picks_the_hypothesis_icp_turns_into_the_best_alignment(room_pair):
    """A wrong pose listed first (90 degrees off) loses to a near-miss (8 degrees / 0.2 m off) that ICP
    pulls onto the true pose; the returned transform is the refined near-miss."""
    src, ref, gt = room_pair.src_points.astype(np.float64), room_pair.ref_points.astype(np.float64), room_pair.transform
    wrong = _rotation_z(90, [1.0, 0.5, 0.0]) @ gt
    near = _perturbed(gt, 8.0, [0.15, -0.1, 0.05], seed=3)
    assert transform_rmse(near, gt, src) > 0.2
    transform, fitness, index = verify_hypotheses(src, ref, [wrong, near], voxel_size=0.05)
    assert index == 1 and 0 < fitness <= 1
    assert relative_translation_error(transform, gt) < 0.02 and relative_rotation_error(transform, gt) < 0.5
    # keep=1: only the best coarse fit is refined at full resolution, and it is still the near-miss
    assert verify_hypotheses(src, ref, [wrong, near], voxel_size=0.05, keep=1)[2] == 1
    with pytest.raises(ValueError, match="hypotheses"):
        verify_hypotheses(src, ref, [], voxel_size=0.05)
    with pytest.raises(ValueError, match=r"hypotheses\[1\]"):
        verify_hypotheses(src, ref, [gt, np.eye(3)], voxel_size=0.05)
    with pytest.raises(ValueError, match=r"hypotheses\[0\]"):
        verify_hypotheses(src, ref, [np.full((4, 4), np.nan)], voxel_size=0.05)
    with pytest.raises(ValueError, match="voxel_size"):
        verify_hypotheses(src, ref, [gt], voxel_size=0)


def test_distinct_poses_drops_near_duplicates():
    base = _rotation_z(30, [1.0, 2.0, 0.0])
    close = _rotation_z(33, [1.1, 2.0, 0.0])       # 3 degrees and 0.1 m away: a duplicate
    turned = _rotation_z(40, [1.0, 2.0, 0.0])      # 10 degrees away
    moved = _rotation_z(30, [1.5, 2.0, 0.0])       # 0.5 m away
    kept = distinct_poses([base, close, turned, moved, base], max_count=10)
    assert len(kept) == 3 and np.array_equal(kept[0], base) and np.array_equal(kept[1], turned)
    assert len(distinct_poses([base, turned, moved], max_count=2)) == 2


def test_fpfh_restarts_are_verified(room_pair):
    from pc3d.models.registration.fpfh_ransac import FPFHRansacRegistration
    single = FPFHRansacRegistration(voxel_size=0.05).register(room_pair.src_points, room_pair.ref_points)
    several = FPFHRansacRegistration(voxel_size=0.05, restarts=3).register(room_pair.src_points, room_pair.ref_points)
    assert "num_hypotheses" not in single.extra
    assert 1 <= several.extra["num_hypotheses"] <= 3 and 0 <= several.extra["hypothesis"] < several.extra["num_hypotheses"]
    with pytest.raises(ValueError, match="restarts"):
        FPFHRansacRegistration(restarts=0)
