"""pc3d.evaluation.roitr_protocol computes exactly what RoITr's own evaluation scripts compute.

The fixtures hold, for every pair of the real 3DMatch / 3DLoMatch benchmarks, seeded correspondences,
confidences and estimated poses, and what RoITr's `evaluate_registration_c2f[_rotated].py` +
`benchmark.py` computed from them on the real gt.log / gt.info files (run in a harness outside the
project, RANSAC replaced by the given pose). Equality is exact.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from pc3d.evaluation import roitr_protocol as rp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
BENCHES = ("3DMatch", "3DLoMatch")


@pytest.fixture(scope="module")
def plain():
    with np.load(FIXTURES / "roitr_eval_protocol.npz") as fx:  # decompress each array once
        return dict(fx)


@pytest.fixture(scope="module")
def rotated():
    with np.load(FIXTURES / "roitr_eval_protocol_rotated.npz") as fx:
        return dict(fx)


def _pairs(fx, bench, shared_data, rotated):
    bdir = shared_data / "3dmatch" / "benchmarks" / bench
    scenes = sorted(p.name for p in bdir.iterdir())
    split = fx[f"{bench}/split"]
    names = np.empty(split[-1, 1], dtype=object)
    for scene, (lo, hi) in zip(scenes, split):
        names[lo:hi] = scene
    pairs = []
    for p in range(len(names)):
        est = np.eye(4)
        est[:3] = fx[f"{bench}/est"][p]
        src = fx[f"{bench}/src"][p]
        pairs.append(rp.ProtocolPair(names[p], src, fx[f"{bench}/ref"][p], fx[f"{bench}/conf"][p], est,
                                     fx[f"{bench}/gt_rot"][p], fx[f"{bench}/gt_trans"][p],
                                     src if rotated else None))
    return bdir, pairs


def _printed_values(text):
    vals = {}
    for line in text.splitlines():
        for key, name in (("Inlier ratio", "ir"), ("Feature match recall", "fmr"), ("Registration_recall", "rr")):
            if line.startswith(key):
                vals[name] = float(line.split(":")[1])
    return vals


@pytest.mark.parametrize("bench", BENCHES)
def test_plain_benchmark_equals_roitr_scripts(plain, bench, shared_data):
    bdir, pairs = _pairs(plain, bench, shared_data, rotated=False)
    res = rp.evaluate(pairs, bdir, rotated=False, n_points=int(plain["n_points"]))
    for p, keep in enumerate(res.sampled):
        np.testing.assert_array_equal(np.sort(keep), np.sort(plain[f"{bench}/sel"][p]))
    np.testing.assert_array_equal(res.pair_inlier_ratio.astype(np.float64), plain[f"{bench}/ir"])
    np.testing.assert_array_equal(res.pair_success, plain[f"{bench}/flags"])
    recalls = [s["registration_recall"] for s in res.scenes.values()]
    assert recalls == plain[f"{bench}/rec"].tolist()
    assert res.registration_recall == float(np.mean(plain[f"{bench}/rec"]))
    printed = _printed_values(str(plain[f"{bench}/printed"]))
    assert f"{res.inlier_ratio:.3f}" == f"{printed['ir']:.3f}"
    assert f"{res.feature_matching_recall:.3f}" == f"{printed['fmr']:.3f}"
    # the per-scene table the reference writes: precision / recall to 3 decimals
    table = [ln.split("¦") for ln in str(plain[f"{bench}/printed"]).splitlines()[1:9]]
    assert [f"{r:.3f}" for r in recalls] == [row[2].strip() for row in table]


@pytest.mark.parametrize("bench", BENCHES)
def test_information_errors_equal_reference(plain, bench, shared_data):
    bdir, pairs = _pairs(plain, bench, shared_data, rotated=False)
    flags = plain[f"{bench}/flags"]
    want = plain[f"{bench}/p"]
    got, start = [], 0
    for scene in sorted(p.name for p in bdir.iterdir()):
        heads, gt = rp._read_positional(bdir / scene / "gt.log", 4)
        _, info = rp._read_positional(bdir / scene / "gt.info", 6)
        for idx in range(len(heads)):
            if flags[start + idx] != 2:
                got.append(rp.information_error(pairs[start + idx].est, gt[idx], info[idx]))
        start += len(heads)
    np.testing.assert_array_equal(np.array(got), want)


@pytest.mark.parametrize("bench", BENCHES)
def test_rotated_benchmark_equals_roitr_scripts(plain, rotated, bench, shared_data):
    # the rotated GT poses themselves come from RoITr's loader: reproduce them from the plain pair poses
    for p in range(len(rotated[f"{bench}/gt_rot"])):
        rot, trans = rp.rotate_pose(p, plain[f"{bench}/info_rot64"][p], plain[f"{bench}/info_trans64"][p])
        np.testing.assert_array_equal(rot, rotated[f"{bench}/gt_rot"][p])
        np.testing.assert_array_equal(trans, rotated[f"{bench}/gt_trans"][p])
    bdir, pairs = _pairs(rotated, bench, shared_data, rotated=True)
    res = rp.evaluate(pairs, bdir, rotated=True, n_points=int(rotated["n_points"]))
    np.testing.assert_array_equal(res.pair_inlier_ratio.astype(np.float64), rotated[f"{bench}/ir"])
    np.testing.assert_array_equal(res.pair_success, rotated[f"{bench}/hits"])
    printed = _printed_values(str(rotated[f"{bench}/printed"]))
    assert f"{res.inlier_ratio:.3f}" == f"{printed['ir']:.3f}"
    assert f"{res.feature_matching_recall:.3f}" == f"{printed['fmr']:.3f}"
    assert f"{res.registration_recall:.3f}" == f"{printed['rr']:.3f}"


def test_quaternion_matches_scipy_up_to_rounding():
    from scipy.spatial.transform import Rotation
    rot = Rotation.random(5, random_state=0)
    for r in rot:
        q = rp.quaternion_wxyz(r.as_matrix())
        x, y, z, w = r.as_quat() * np.sign(r.as_quat()[3])
        np.testing.assert_allclose(q, [w, x, y, z], atol=1e-12)


def test_fixture_records_reference(plain, rotated):
    for fx in (plain, rotated):
        ref = json.loads(str(fx["reference"]))
        assert ref["repo"] == "haoyu94/RoITr" and len(ref["commit"]) == 40


def test_bad_input_is_named(shared_data):
    with pytest.raises(ValueError, match="src_corr: expected"):
        rp.ProtocolPair("s", np.zeros((3, 2)), np.zeros((3, 3)), np.ones(3), np.eye(4), np.eye(3), np.zeros(3))
    with pytest.raises(ValueError, match="lengths differ"):
        rp.ProtocolPair("s", np.zeros((3, 3)), np.zeros((2, 3)), np.ones(3), np.eye(4), np.eye(3), np.zeros(3))
    with pytest.raises(ValueError, match="pairs: 0 given"):
        rp.evaluate([], shared_data / "3dmatch" / "benchmarks" / "3DMatch")


def test_benchmark_loader_rotates_like_roitr(plain, rotated, shared_data):
    from pc3d.data.threedmatch import ThreeDMatchBenchmark
    bench = ThreeDMatchBenchmark(shared_data / "3dmatch", "3DMatch", rotated=True, rotation_protocol="roitr")
    plain_bench = ThreeDMatchBenchmark(shared_data / "3dmatch", "3DMatch")
    for p in (0, 1, 505, 506, 1622):
        rot, on_source = rp.roitr_rotation(p)
        pair, base = bench[p], plain_bench[p]
        want = np.eye(4)
        want[:3, :3] = rot
        expect = base.transform @ np.linalg.inv(want) if on_source else want @ base.transform
        np.testing.assert_allclose(pair.transform, expect, atol=1e-12)
        # the same rotation RoITr's loader applied to its own pose of that pair
        r_ref, _ = rp.rotate_pose(p, plain["3DMatch/info_rot64"][p], plain["3DMatch/info_trans64"][p])
        np.testing.assert_array_equal(r_ref, rotated["3DMatch/gt_rot"][p])
    # a scene subset keeps the global pair numbers
    sub = ThreeDMatchBenchmark(shared_data / "3dmatch", "3DMatch", scenes=["sun3d-home_at-home_at_scan1_2013_jan_1"],
                               rotated=True, rotation_protocol="roitr")
    np.testing.assert_allclose(sub[0].transform, bench[506].transform, atol=0)
    with pytest.raises(ValueError, match="rotation_protocol"):
        ThreeDMatchBenchmark(shared_data / "3dmatch", "3DMatch", rotation_protocol="x")
