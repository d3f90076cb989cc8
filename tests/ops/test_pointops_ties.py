"""Tie-exact kNN / FPS (`knn_pointops`, `farthest_point_sample_pointops`) against the reference kernels.

The fixture holds the outputs of a CPU emulation of RoITr's CUDA pointops kernels (made in a harness
outside the project, each op checked against brute-force loops), on lattices with many exact distance
ties and on subsets of the real 3DMatch fragments. Equality is index for index.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.ops.point_ops import (farthest_point_sample_pointops, knn, knn_pointops, pointops_block_size)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "roitr_pointops_ties.npz"
CLOUDS = ("lattice", "lattice_dense", "bin21", "bin34")


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as fx:
        return dict(fx)


def test_fixture_names_reference_commit(fixture):
    ref = json.loads(str(fixture["reference"]))
    assert ref["repo"] == "haoyu94/RoITr" and len(ref["commit"]) == 40


@pytest.mark.parametrize("name", CLOUDS)
def test_knn_pointops_equals_reference_kernel(fixture, name):
    pts = fixture[f"{name}/points"]
    dist, idx = knn_pointops(pts, pts, int(fixture[f"{name}/k"]))
    np.testing.assert_array_equal(idx.numpy(), fixture[f"{name}/knn_idx"])
    np.testing.assert_array_equal(dist.numpy(), fixture[f"{name}/knn_dist"])


@pytest.mark.parametrize("name", CLOUDS)
def test_fps_pointops_equals_reference_kernel(fixture, name):
    pts = fixture[f"{name}/points"]
    want = fixture[f"{name}/fps_idx"]
    np.testing.assert_array_equal(farthest_point_sample_pointops(pts, len(want)).numpy(), want)


def test_lattice_fixture_really_has_ties(fixture):
    # guards the fixture itself: most tied neighbours resolve differently from "lowest index first"
    d = fixture["lattice/knn_dist"]
    assert (np.diff(d, axis=1) == 0).sum() > 1000
    pts = fixture["lattice/points"]
    _, topk_idx = knn(torch.from_numpy(pts), torch.from_numpy(pts), int(fixture["lattice/k"]))
    assert not np.array_equal(topk_idx.numpy(), fixture["lattice/knn_idx"])


def _brute_knn(pts, q, k):
    d2 = np.array([np.float32(np.float32(np.float32((q[0] - p[0]) ** 2) + np.float32((q[1] - p[1]) ** 2))
                              + np.float32((q[2] - p[2]) ** 2)) for p in pts], np.float32)
    return np.sort(d2)[:k]


def test_knn_pointops_distances_are_the_k_smallest():
    rng = np.random.default_rng(3)
    pts = rng.integers(0, 5, size=(200, 3)).astype(np.float32) * np.float32(0.01)
    dist, idx = knn_pointops(pts[:30], pts, 12)
    for q in range(30):
        np.testing.assert_array_equal(dist[q].numpy(), np.sqrt(_brute_knn(pts, pts[q], 12)))
        d_from_idx = np.sqrt(_brute_knn(pts[idx[q].numpy()], pts[q], 12))
        np.testing.assert_array_equal(np.sort(d_from_idx), np.sqrt(_brute_knn(pts, pts[q], 12)))


def _bitrev(t, bits):
    return int(format(t, f"0{bits}b")[::-1], 2) if bits else 0


def test_fps_pointops_tie_rule_in_closed_form():
    rng = np.random.default_rng(4)
    pts = rng.integers(0, 6, size=(300, 3)).astype(np.float32) * np.float32(0.01)
    got = farthest_point_sample_pointops(pts, 60).numpy()
    block = pointops_block_size(300)
    bits = block.bit_length() - 1
    min_d2 = np.full(300, np.float32(1e10), np.float32)
    want = [0]
    for _ in range(59):
        o = pts[want[-1]]
        d = ((pts[:, 0] - o[0]) ** 2 + (pts[:, 1] - o[1]) ** 2) + (pts[:, 2] - o[2]) ** 2
        min_d2 = np.minimum(min_d2, d.astype(np.float32))
        cands = np.flatnonzero(min_d2 == min_d2.max())
        want.append(min(cands, key=lambda k: (_bitrev(k % block, bits), k)))
    np.testing.assert_array_equal(got, want)


def test_block_size_and_bad_input():
    assert [pointops_block_size(n) for n in (1, 2, 3, 255, 256, 257, 5000)] == [1, 2, 2, 128, 256, 256, 1024]
    with pytest.raises(ValueError, match="k: expected an int in 1..100"):
        knn_pointops(np.zeros((4, 3)), np.zeros((4, 3)), 101)
    with pytest.raises(ValueError, match="num_samples"):
        farthest_point_sample_pointops(np.zeros((4, 3)), 0)
    with pytest.raises(ValueError, match="points"):
        farthest_point_sample_pointops(np.full((4, 3), np.nan), 2)
