"""3DMatch / 3DLoMatch loader on the real benchmark files and the real PREDATOR fragment pair."""
import numpy as np
import pytest
from scipy.spatial import cKDTree

from pc3d.data.threedmatch import (ThreeDMatchBenchmark, load_fragment, load_metadata_pairs, random_rotation,
                                   read_gt_log, rotate_pair)

EXPECTED = {
    "3DMatch": (1623, 1279, [506, 156, 208, 226, 104, 54, 292, 77]),
    "3DLoMatch": (1781, 1726, [525, 289, 230, 218, 158, 49, 240, 72]),
}
SCENE_ORDER = ["7-scenes-redkitchen", "sun3d-home_at-home_at_scan1_2013_jan_1", "sun3d-home_md-home_md_scan9_2012_sep_30",
               "sun3d-hotel_uc-scan3", "sun3d-hotel_umd-maryland_hotel1", "sun3d-hotel_umd-maryland_hotel3",
               "sun3d-mit_76_studyroom-76-1studyroom2", "sun3d-mit_lab_hj-lab_hj_tea_nov_2_2012_scan1_erika"]


@pytest.fixture(scope="module")
def root(shared_data):
    path = shared_data / "3dmatch"
    if not (path / "benchmarks").is_dir():
        pytest.skip("3dmatch benchmarks missing")
    return path


@pytest.mark.parametrize("bench", ["3DMatch", "3DLoMatch"])
def test_pair_counts_match_the_protocol(root, bench):
    ds = ThreeDMatchBenchmark(root, bench)
    total, non_consecutive, per_scene = EXPECTED[bench]
    assert len(ds) == total
    assert sum(not p.consecutive for p in ds.pairs) == non_consecutive
    assert [sum(p.scene == s for p in ds.pairs) for s in SCENE_ORDER] == per_scene
    assert all(p.information is not None and p.information.shape == (6, 6) for p in ds.pairs)
    assert all(p.overlap is not None for p in ds.pairs)
    for p in ds.pairs[:50]:
        np.testing.assert_allclose(p.transform[:3, :3] @ p.transform[:3, :3].T, np.eye(3), atol=1e-3)  # gt.log rotations are only orthonormal to ~1e-4
    if bench == "3DLoMatch":
        assert all(p.overlap < 0.3 for p in ds.pairs)


@pytest.mark.parametrize("bench", ["3DMatch", "3DLoMatch"])
def test_metadata_pickle_agrees_with_gt_log(root, bench):
    meta = load_metadata_pairs(root / "metadata" / f"{bench}.pkl")
    ds = ThreeDMatchBenchmark(root, bench)
    lookup = {(p.scene, p.frag_i, p.frag_j): p for p in ds.pairs}
    assert len(meta) == len(ds)
    for m in meta[::37]:
        np.testing.assert_allclose(m.transform, lookup[(m.scene, m.frag_i, m.frag_j)].transform, atol=2e-3)  # pkl rotations are re-orthonormalised


def test_rotated_variant_is_seeded_haar_and_consistent(root):
    plain = ThreeDMatchBenchmark(root, "3DMatch", scenes=["sun3d-hotel_umd-maryland_hotel3"])
    rot_a = ThreeDMatchBenchmark(root, "3DMatch", scenes=["sun3d-hotel_umd-maryland_hotel3"], rotated=True, seed=1)
    rot_b = ThreeDMatchBenchmark(root, "3DMatch", scenes=["sun3d-hotel_umd-maryland_hotel3"], rotated=True, seed=1)
    rot_c = ThreeDMatchBenchmark(root, "3DMatch", scenes=["sun3d-hotel_umd-maryland_hotel3"], rotated=True, seed=2)
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(20, 3))
    for p, a, b, c in zip(plain.pairs, rot_a.pairs, rot_b.pairs, rot_c.pairs):
        np.testing.assert_array_equal(a.transform, b.transform)
        assert not np.allclose(a.src_rotation, c.src_rotation)
        assert a.information is None and a.overlap == p.overlap
        # rotated src mapped by the new GT == rotated (src mapped by the old GT)
        src_rot = pts @ a.src_rotation.T
        lhs = src_rot @ a.transform[:3, :3].T + a.transform[:3, 3]
        rhs = (pts @ p.transform[:3, :3].T + p.transform[:3, 3]) @ a.ref_rotation.T
        np.testing.assert_allclose(lhs, rhs, atol=1e-9)
    twice = rotate_pair(rotate_pair(plain.pairs[0], np.eye(3), np.eye(3)), np.eye(3), np.eye(3))
    np.testing.assert_allclose(twice.transform, plain.pairs[0].transform)


def test_random_rotation_is_proper_and_haar_like():
    rng = np.random.default_rng(0)
    rots = np.stack([random_rotation(rng) for _ in range(3000)])
    np.testing.assert_allclose(rots @ rots.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rots.shape), atol=1e-10)
    assert np.allclose(np.linalg.det(rots), 1)
    # Haar measure: E[R] = 0 and the rotation angle has density (1 - cos t) / pi, so E[cos t] = -1/2
    assert np.abs(rots.mean(0)).max() < 0.05
    cos_angle = (np.trace(rots, axis1=1, axis2=2) - 1) / 2
    assert abs(cos_angle.mean() + 0.5) < 0.03


def test_real_fragment_pair_aligned_by_3dlomatch_gt(root):
    frag = root / "fragments" / "predator_demo"
    ref = load_fragment(frag / "cloud_bin_21.pth")
    src = load_fragment(frag / "cloud_bin_34.pth")
    assert ref.shape == (25337, 3) and src.shape == (14602, 3)
    gt = read_gt_log(root / "benchmarks/3DLoMatch/7-scenes-redkitchen/gt.log")[(21, 34)]
    tree = cKDTree(ref)
    within = lambda t: float((tree.query(src @ t[:3, :3].T + t[:3, 3])[0] < 0.03).mean())
    assert 0.18 < within(gt) < 0.23                 # README: 20.5%
    assert within(np.eye(4)) < 0.05


def test_load_pair_from_standard_layout(root, tmp_path):
    scene = "7-scenes-redkitchen"
    (tmp_path / "benchmarks" / "3DLoMatch").mkdir(parents=True)
    (tmp_path / "benchmarks" / "3DLoMatch" / scene).symlink_to(root / "benchmarks" / "3DLoMatch" / scene)
    (tmp_path / "fragments" / scene).mkdir(parents=True)
    for k in (21, 34):
        (tmp_path / "fragments" / scene / f"cloud_bin_{k}.pth").symlink_to(root / "fragments/predator_demo" / f"cloud_bin_{k}.pth")
    ds = ThreeDMatchBenchmark(tmp_path, "3DLoMatch", rotated=True, seed=3)
    index = next(n for n, p in enumerate(ds.pairs) if (p.frag_i, p.frag_j) == (21, 34))
    src, ref, pair = ds.load_pair(index)
    tree = cKDTree(ref)
    t = pair.transform
    assert 0.18 < float((tree.query(src @ t[:3, :3].T + t[:3, 3])[0] < 0.03).mean()) < 0.23
    with pytest.raises(FileNotFoundError):
        ds.load_pair(0)
    with pytest.raises(ValueError):
        ThreeDMatchBenchmark(tmp_path, "3DNoMatch")


def test_bad_fragment_files(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 2)))
    with pytest.raises(ValueError):
        load_fragment(tmp_path / "bad.npy")
    arr = np.zeros((4, 3))
    arr[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    with pytest.raises(ValueError):
        load_fragment(tmp_path / "nan.npy")
