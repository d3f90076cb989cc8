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


# -- issue 17: truncated files, sizes, dtypes, intensity, wrong --dim ------------------------------------
def _ply_bytes(pts, fmt="binary_little_endian", faces=False):
    header = [b"ply", f"format {fmt} 1.0".encode(), b"comment pc3d test", f"element vertex {len(pts)}".encode(),
              b"property float x", b"property float y", b"property float z", b"property float intensity"]
    if faces:
        header += [b"element face 1", b"property list uchar int vertex_indices"]
    header += [b"end_header"]
    head = b"\n".join(header) + b"\n"
    if fmt == "ascii":
        body = "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in pts).encode()
        return head + body + (b"3 0 1 2\n" if faces else b"")
    body = pts.astype("<f4").tobytes()
    return head + body + (b"\x03" + np.array([0, 1, 2], "<i4").tobytes() if faces else b"")


def _pcd_bytes(pts, kind="binary"):
    head = (f"# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\n"
            f"TYPE F F F F\nCOUNT 1 1 1 1\nWIDTH {len(pts)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
            f"POINTS {len(pts)}\nDATA {kind}\n").encode()
    if kind == "ascii":
        return head + "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in pts).encode()
    return head + pts.astype("<f4").tobytes()


PTS = np.random.default_rng(3).uniform(-20, 20, size=(300, 4)).astype(np.float32)
PTS[:, 3] = np.abs(PTS[:, 3]) / 20


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
def test_ply_keeps_intensity_and_truncated_ply_raises(tmp_path, fmt):
    path = tmp_path / "scan.ply"
    path.write_bytes(_ply_bytes(PTS, fmt, faces=True))
    np.testing.assert_allclose(read_points(path), PTS, atol=1e-5)  # x, y, z, intensity
    assert read_points(path, dim=3).shape == (300, 3)
    # the exact failure of the issue: a third of the vertex data cut off. Open3D printed "Read PLY failed"
    # and returned 300 rows of which ~100 were uninitialised memory
    full = _ply_bytes(PTS, fmt)
    path.write_bytes(full[: len(full) - len(full) // 3])
    with pytest.raises(ValueError, match=r"scan\.ply: truncated PLY: the header declares 300 vertices"):
        read_points(path)


def test_big_endian_and_open3d_written_ply(tmp_path):
    head = (b"ply\nformat binary_big_endian 1.0\nelement vertex 300\nproperty float x\nproperty float y\n"
            b"property float z\nproperty float intensity\nend_header\n")
    (tmp_path / "be.ply").write_bytes(head + PTS.astype(">f4").tobytes())
    np.testing.assert_allclose(read_points(tmp_path / "be.ply"), PTS)
    o3d = pytest.importorskip("open3d")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(PTS[:, :3].astype(np.float64)))
    o3d.io.write_point_cloud(str(tmp_path / "o3d.ply"), cloud)
    np.testing.assert_allclose(read_points(tmp_path / "o3d.ply"), PTS[:, :3], atol=1e-5)
    data = (tmp_path / "o3d.ply").read_bytes()
    (tmp_path / "o3d_cut.ply").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="o3d_cut.ply: truncated PLY"):
        read_points(tmp_path / "o3d_cut.ply")


@pytest.mark.parametrize("kind", ["binary", "ascii"])
def test_pcd_keeps_intensity_and_truncated_pcd_raises(tmp_path, kind):
    path = tmp_path / "scan.pcd"
    path.write_bytes(_pcd_bytes(PTS, kind))
    np.testing.assert_allclose(read_points(path), PTS, atol=1e-5)
    full = _pcd_bytes(PTS, kind)
    path.write_bytes(full[: len(full) - len(full) // 3])
    with pytest.raises(ValueError, match=r"scan\.pcd: truncated PCD: the header declares 300 points"):
        read_points(path)


def test_compressed_pcd_through_open3d_keeps_intensity(tmp_path):
    o3d = pytest.importorskip("open3d")
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(PTS[:, :3]))
    cloud.point.intensity = o3d.core.Tensor(PTS[:, 3:4])
    o3d.t.io.write_point_cloud(str(tmp_path / "c.pcd"), cloud, compressed=True)
    assert b"binary_compressed" in (tmp_path / "c.pcd").read_bytes()[:400]
    np.testing.assert_allclose(read_points(tmp_path / "c.pcd"), PTS, atol=1e-6)
    data = (tmp_path / "c.pcd").read_bytes()
    (tmp_path / "cut.pcd").write_bytes(data[: len(data) - 200])
    with pytest.raises(ValueError, match="cut.pcd: truncated PCD: the compressed block"):
        read_points(tmp_path / "cut.pcd")


def test_bin_size_not_whole_float32_x_dim(tmp_path):
    PTS.tofile(tmp_path / "s.bin")
    with open(tmp_path / "s.bin", "ab") as f:
        f.write(b"\x00\x01\x02")  # 3 stray bytes: np.fromfile dropped them silently
    with pytest.raises(ValueError, match=r"s\.bin: size 4803 bytes is not a whole number of float32.*dim=4"):
        read_points(tmp_path / "s.bin")
    with open(tmp_path / "s.bin", "ab") as f:
        f.write(b"\x00" * 5)  # now 4808 bytes = 1202 floats: whole floats, not whole rows of 4
    with pytest.raises(ValueError, match=r"s\.bin: size 4808 bytes = 1202 float32 values is not a multiple of dim=4"):
        read_points(tmp_path / "s.bin")


def test_complex_npy_and_directory_are_refused(tmp_path):
    np.save(tmp_path / "c.npy", (PTS[:, :3] + 1j).astype(np.complex64))
    with pytest.raises(ValueError, match=r"c\.npy: point array has complex dtype complex64"):
        read_points(tmp_path / "c.npy")
    np.save(tmp_path / "b.npy", PTS[:, :3] > 0)
    with pytest.raises(ValueError, match="boolean"):
        read_points(tmp_path / "b.npy")
    (tmp_path / "scan.bin").mkdir()
    with pytest.raises(IsADirectoryError, match=r"scan\.bin: is a directory, not a point file"):
        read_points(tmp_path / "scan.bin")


def test_reader_errors_name_the_file(tmp_path):
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(ValueError, match=r"junk\.ply: not a PLY file"):
        read_points(tmp_path / "junk.ply")
    (tmp_path / "nohead.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\n")
    with pytest.raises(ValueError, match=r"nohead\.ply: no 'end_header'"):
        read_points(tmp_path / "nohead.ply")
    (tmp_path / "junk.pcd").write_bytes(b"VERSION 0.7\nFIELDS x y z\nDATA binary\n")
    with pytest.raises(ValueError, match=r"junk\.pcd: incomplete PCD header"):
        read_points(tmp_path / "junk.pcd")
    (tmp_path / "noxyz.pcd").write_bytes(_pcd_bytes(PTS).replace(b"FIELDS x y z", b"FIELDS a b c"))
    with pytest.raises(ValueError, match=r"noxyz\.pcd: has no x, y, z field"):
        read_points(tmp_path / "noxyz.pcd")


NUSCENES = "nuscenes/mmdet3d_demo/samples/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
WAYMO6 = "waymo/kitti_format/training/velodyne/0000000.bin"
SEMKITTI = "semantickitti/sequences/00/velodyne/000000.bin"


def test_wrong_dim_is_refused_with_the_right_one(shared_data):
    """The exact case of the issue: the 5-column nuScenes sweep (34,688 points, a multiple of 4) read as 4
    columns was accepted. Its 4th column then holds x / y / z / ring values, some negative."""
    with pytest.raises(ValueError, match=r"LIDAR_TOP__1532402927647951\.pcd\.bin: read as 4 float32 columns "
                                         r"\(the default dim\).*pass --dim 5"):
        read_points(shared_data / NUSCENES)
    with pytest.raises(ValueError, match=r"\(--dim\).*pass --dim 5"):
        read_points(shared_data / NUSCENES, dim=4)
    for dim in (3, 4, 5):  # converted Waymo (x y z intensity elongation timestamp) under any other dim
        with pytest.raises(ValueError, match="pass --dim 6"):
            read_points(shared_data / WAYMO6, dim=dim)
    with pytest.raises(ValueError, match="pass --dim 4"):  # SemanticKITTI's 50 points (200 floats) as 5
        read_points(shared_data / SEMKITTI, dim=5)


def test_every_shared_scan_reads_with_its_documented_dim(shared_data):
    """No legit KITTI / SemanticKITTI / nuScenes / Lyft / Waymo file is refused by the plausibility check."""
    cases = {"kitti/object/training/velodyne/000000.bin": (4, 115384),
             "kitti/object/training/velodyne/000001.bin": (4, 120268),
             "kitti/reduced_fov/mmdet3d_demo/000008.bin": (4, 17238),
             "kitti/reduced_fov/pointpillars_demo/000134.bin": (4, 19097),
             "kitti/mmdet3d_tests/training/velodyne/000000.bin": (4, 800), SEMKITTI: (4, 50), NUSCENES: (5, 34688),
             "nuscenes/mmdet3d_tests/samples/LIDAR_TOP/n015-2018-08-02-17-16-37+0800__LIDAR_TOP__1533201470948018.pcd.bin": (5, 100),
             "lyft/lidar/host-a017_lidar1_1236118886501000046.bin": (5, 5), WAYMO6: (6, 800),
             "waymo/kitti_format/waymo_gt_database/0_Car_0.bin": (5, 303)}
    for rel, (dim, n) in cases.items():
        if not (shared_data / rel).exists():
            pytest.skip(f"{rel} missing")
        assert read_points(shared_data / rel, dim=dim).shape == (n, dim), rel
        if dim == 4:
            assert read_points(shared_data / rel).shape == (n, 4)  # default dim


@pytest.mark.parametrize("fmt", ["binary_little_endian", "ascii"])
def test_ply_with_faces_before_the_vertices(tmp_path, fmt):
    """Open3D returns the declared rows with garbage when such a file is cut; the walk over the list
    properties finds where the vertices start and that they end early."""
    head = (f"ply\nformat {fmt} 1.0\nelement face 2\nproperty list uchar int vertex_indices\nproperty uchar flag\n"
            f"element vertex 300\nproperty float x\nproperty float y\nproperty float z\nproperty float intensity\n"
            f"end_header\n").encode()
    if fmt == "ascii":
        body = b"3 0 1 2 7\n4 0 1 2 3 9\n" + "".join(" ".join(f"{v:.6f}" for v in r) + "\n" for r in PTS).encode()
    else:
        face = lambda idx, flag: bytes([len(idx)]) + np.array(idx, "<i4").tobytes() + bytes([flag])  # noqa: E731
        body = face([0, 1, 2], 7) + face([0, 1, 2, 3], 9) + PTS.astype("<f4").tobytes()
    (tmp_path / "mesh.ply").write_bytes(head + body)
    np.testing.assert_allclose(read_points(tmp_path / "mesh.ply"), PTS, atol=1e-5)
    (tmp_path / "mesh.ply").write_bytes(head + body[:-len(body) // 3])
    with pytest.raises(ValueError, match=r"mesh\.ply: truncated PLY"):
        read_points(tmp_path / "mesh.ply")
    (tmp_path / "mesh.ply").write_bytes(head + body[:12])  # cut inside the faces
    with pytest.raises(ValueError, match=r"mesh\.ply: truncated PLY"):
        read_points(tmp_path / "mesh.ply")
