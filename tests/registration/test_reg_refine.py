"""Coarse-to-fine point-to-plane ICP shared by the registration methods."""
import numpy as np
import pytest

from pc3d.evaluation.registration_metrics import relative_rotation_error, relative_translation_error, transform_rmse
from pc3d.models.registration.refine import downsample_with_normals, refine_icp

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
    refined = RoITrRegistration.from_checkpoint(pose="lgr")
    assert refined.name == "roitr_lgr_icp"
    a = plain.register(room_pair.src_points, room_pair.ref_points)
    b = refined.register(room_pair.src_points, room_pair.ref_points)
    assert "icp_fitness" in b.extra and "icp_fitness" not in a.extra
    assert np.array_equal(a.correspondences, b.correspondences)
    with pytest.raises(ValueError, match="voxel_size"):
        RoITrRegistration(plain.model, icp=True, voxel_size=-1)
