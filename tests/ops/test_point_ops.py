"""pc3d.ops.point_ops against brute-force numpy / scipy / Open3D references."""
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from pc3d.ops.point_ops import (estimate_normals, farthest_point_sample, knn, point_pair_features,
                                three_nn_interpolate, vector_angle)


def _numpy_fps(xyz, m, start):
    chosen = [start]
    d = ((xyz - xyz[start]) ** 2).sum(1)
    for _ in range(m - 1):
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, ((xyz - xyz[nxt]) ** 2).sum(1))
    return np.array(chosen)


def test_fps_matches_numpy_reference_and_is_rotation_invariant():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(300, 3))
    start = int(np.argmax(((xyz - xyz.mean(0)) ** 2).sum(1)))
    ref = _numpy_fps(xyz, 40, start)
    got = farthest_point_sample(torch.from_numpy(xyz), 40).numpy()
    np.testing.assert_array_equal(got, ref)
    assert len(set(got.tolist())) == 40
    rot = Rotation.random(random_state=1).as_matrix()
    got_rot = farthest_point_sample(torch.from_numpy(xyz @ rot.T + 0.0), 40).numpy()
    np.testing.assert_array_equal(got_rot, ref)
    # m >= N gives every point once
    all_idx = farthest_point_sample(torch.from_numpy(xyz[:10]), 50)
    assert sorted(all_idx.tolist()) == list(range(10))
    np.testing.assert_array_equal(farthest_point_sample(torch.from_numpy(xyz), 5, start_index=3).numpy(), _numpy_fps(xyz, 5, 3))


def test_knn_matches_kdtree_and_batches():
    rng = np.random.default_rng(1)
    sup = rng.uniform(-2, 2, size=(500, 3)).astype(np.float32)
    qry = rng.uniform(-2, 2, size=(70, 3)).astype(np.float32)
    dist, idx = knn(torch.from_numpy(qry), torch.from_numpy(sup), 8, chunk_size=16)
    ref_d, ref_i = cKDTree(sup).query(qry, k=8)
    np.testing.assert_allclose(dist.numpy(), ref_d, atol=1e-5)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    bd, bi = knn(torch.from_numpy(np.stack([qry, qry])), torch.from_numpy(np.stack([sup, sup])), 8)
    np.testing.assert_array_equal(bi[1].numpy(), ref_i)
    # k larger than the cloud is clipped
    assert knn(torch.from_numpy(qry), torch.from_numpy(sup[:4]), 10)[1].shape == (70, 4)


def test_three_nn_interpolation_reference():
    rng = np.random.default_rng(2)
    sup = rng.normal(size=(50, 3))
    feat = rng.normal(size=(50, 5))
    qry = rng.normal(size=(20, 3))
    got = three_nn_interpolate(torch.from_numpy(qry), torch.from_numpy(sup), torch.from_numpy(feat)).numpy()
    d, i = cKDTree(sup).query(qry, k=3)
    w = 1 / (d + 1e-8)
    w /= w.sum(1, keepdims=True)
    np.testing.assert_allclose(got, (feat[i] * w[..., None]).sum(1), rtol=1e-6, atol=1e-8)
    # exact on support points
    on = three_nn_interpolate(torch.from_numpy(sup[:5]), torch.from_numpy(sup), torch.from_numpy(feat)).numpy()
    np.testing.assert_allclose(on, feat[:5], atol=1e-6)


def test_point_pair_features_reference_and_invariance():
    rng = np.random.default_rng(3)
    p = rng.normal(size=(2, 100, 3))
    n = rng.normal(size=(2, 100, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    got = point_pair_features(*[torch.from_numpy(x) for x in (p[0], n[0], p[1], n[1])]).numpy()

    def ang(a, b):
        c = np.clip((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1), -1, 1)
        return np.arccos(c)
    d = p[1] - p[0]
    ref = np.stack([np.linalg.norm(d, axis=-1), ang(n[0], d), ang(n[1], d), ang(n[0], n[1])], -1)
    np.testing.assert_allclose(got, ref, atol=1e-9)
    rot = Rotation.random(random_state=4).as_matrix()
    t = rng.normal(size=3)
    moved = point_pair_features(*[torch.from_numpy(x) for x in (p[0] @ rot.T + t, n[0] @ rot.T, p[1] @ rot.T + t, n[1] @ rot.T)]).numpy()
    np.testing.assert_allclose(moved, got, atol=1e-9)
    # atan2 form is exact at parallel / antiparallel vectors where acos loses precision
    a = torch.tensor([[1.0, 0, 0]], dtype=torch.float64)
    assert float(vector_angle(a, a)) == 0.0
    assert abs(float(vector_angle(a, -a)) - np.pi) < 1e-12


def test_normals_face_sensor_and_match_open3d():
    import open3d as o3d
    rng = np.random.default_rng(5)
    xy = rng.uniform(-1, 1, size=(400, 2))
    pts = np.c_[xy, np.full(400, 2.0) + 0.001 * rng.normal(size=400)].astype(np.float32)  # plane z=2, sensor at 0
    normals = estimate_normals(pts, k=20)
    assert normals.shape == (400, 3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
    assert (normals[:, 2] < -0.99).all()  # facing the origin below the plane
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts.astype(np.float64)))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=20))
    np.testing.assert_allclose(np.abs((np.asarray(pcd.normals) * normals).sum(1)), 1, atol=1e-4)


@pytest.mark.parametrize("bad, err", [
    (np.zeros((0, 3), np.float32), ValueError),
    (np.zeros((5, 2), np.float32), ValueError),
    (np.array([[0, 0, np.nan]], np.float32), ValueError),
    ([[0, 0, 0]], TypeError),
    (np.array([["a", "b", "c"]]), TypeError),
])
def test_bad_input_raises(bad, err):
    with pytest.raises(err):
        farthest_point_sample(bad, 2)
    with pytest.raises(err):
        estimate_normals(bad)


def test_bad_arguments():
    pts = torch.zeros(5, 3)
    with pytest.raises(ValueError):
        farthest_point_sample(pts, 0)
    with pytest.raises(ValueError):
        farthest_point_sample(pts, 2, start_index=9)
    with pytest.raises(ValueError):
        knn(pts, pts, 0)
    with pytest.raises(ValueError):
        knn(pts, torch.zeros(0, 3), 2)
    with pytest.raises(ValueError):
        three_nn_interpolate(pts, pts, torch.zeros(4, 2))
