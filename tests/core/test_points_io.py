import numpy as np
import pytest

from pc3d.io.points import read_points, write_points


def test_bin_npy_roundtrip(tmp_path):
    pts = np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32)
    write_points(tmp_path / "a.bin", pts)
    write_points(tmp_path / "a.npy", pts)
    np.testing.assert_array_equal(read_points(tmp_path / "a.bin", dim=5), pts)
    np.testing.assert_array_equal(read_points(tmp_path / "a.npy"), pts)


def test_bin_wrong_dim_is_clear(tmp_path):
    np.zeros((10, 5), np.float32).tofile(tmp_path / "x.bin")
    with pytest.raises(ValueError, match=r"x\.bin.*not a multiple of dim=4.*dim \[5\]"):
        read_points(tmp_path / "x.bin")


def test_ply_and_pcd(tmp_path):
    o3d = pytest.importorskip("open3d")
    pts = np.random.default_rng(1).uniform(-5, 5, size=(50, 3))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    for suffix in (".ply", ".pcd"):
        o3d.io.write_point_cloud(str(tmp_path / f"c{suffix}"), cloud)
        np.testing.assert_allclose(read_points(tmp_path / f"c{suffix}"), pts, atol=1e-5)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        read_points(tmp_path / "missing.bin")
    (tmp_path / "x.xyz").write_text("1 2 3")
    with pytest.raises(ValueError, match="unsupported point file type"):
        read_points(tmp_path / "x.xyz")
    np.save(tmp_path / "flat.npy", np.zeros(7))
    with pytest.raises(ValueError, match=r"flat\.npy.*\(N, C>=3\)"):
        read_points(tmp_path / "flat.npy")


def test_real_scans(shared_data):
    kitti = read_points(shared_data / "kitti/object/training/velodyne/000001.bin")
    assert kitti.shape == (120268, 4)
    frag = read_points(shared_data / "3dmatch/fragments/predator_demo/cloud_bin_34.pth")
    assert frag.shape == (14602, 3) and frag.dtype == np.float32
