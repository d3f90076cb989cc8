"""Numba farthest point sampling (registration) against the torch reference op, and the seeded input subset."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pc3d.models.registration.roitr import input_subset, prepare_cloud
from pc3d.models.registration.sampling import farthest_point_sample
from pc3d.ops.point_ops import farthest_point_sample as reference_fps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_torch_reference_and_is_rotation_invariant(seed):
    points = torch.from_numpy(np.random.default_rng(seed).normal(size=(1500, 3)) * [3.0, 1.0, 0.5])
    idx = farthest_point_sample(points, 300)
    assert torch.equal(idx, reference_fps(points, 300))
    assert len(torch.unique(idx)) == 300 and idx.dtype == torch.int64
    rot = torch.from_numpy(Rotation.random(random_state=seed).as_matrix())
    assert torch.equal(farthest_point_sample(points @ rot.T, 300), idx)
    # greedy property: each pick is the point farthest from the previous picks
    d = torch.cdist(points, points[idx[:10]])
    for k in range(1, 10):
        assert torch.isclose(d[idx[k], :k].min(), d[:, :k].min(1).values.max())


def test_more_samples_than_points_and_bad_input():
    points = torch.rand(20, 4, dtype=torch.float32)
    assert sorted(farthest_point_sample(points, 50).tolist()) == list(range(20))
    with pytest.raises(ValueError, match="num_samples"):
        farthest_point_sample(points, 0)
    with pytest.raises(ValueError, match="points"):
        farthest_point_sample(torch.rand(5, 2), 3)
    with pytest.raises(ValueError, match="points"):
        farthest_point_sample(torch.full((4, 3), float("nan")), 2)
    with pytest.raises(ValueError, match="points"):
        farthest_point_sample(torch.zeros((0, 3)), 2)


def test_prepare_cloud_subset_is_seeded_and_orientation_free():
    points = np.random.default_rng(4).uniform(-2, 2, size=(3000, 3)) + [0, 0, 3]
    assert np.array_equal(input_subset(3000, None), np.arange(3000))
    subset = input_subset(3000, 1000, seed=0)
    assert len(subset) == 1000 and len(np.unique(subset)) == 1000 and np.array_equal(subset, input_subset(3000, 1000, 0))
    xyz, normals, idx = prepare_cloud(points, 256, max_input_points=1000, dtype=torch.float64)
    assert np.isin(idx.numpy(), subset).all()
    np.testing.assert_allclose(xyz.numpy(), points[idx.numpy()])
    rot = Rotation.random(random_state=5).as_matrix()
    xyz_r, normals_r, idx_r = prepare_cloud(points @ rot.T, 256, max_input_points=1000, dtype=torch.float64)
    assert torch.equal(idx_r, idx)
    np.testing.assert_allclose(normals_r.numpy(), normals.numpy() @ rot.T, atol=1e-5)
