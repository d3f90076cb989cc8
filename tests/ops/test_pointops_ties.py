"""Tie-exact kNN / FPS (`knn_pointops`, `farthest_point_sample_pointops`) against the reference kernels.

The fixture holds the outputs of a CPU emulation of RoITr's CUDA pointops kernels (made in a harness
outside the project, each op checked against brute-force loops), on lattices with many exact distance
ties and on subsets of the real 3DMatch fragments. Equality is index for index.
"""
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.ops.point_ops import (farthest_point_sample_pointops, knn, knn_pointops, pointops_block_size)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "roitr_pointops_ties.npz"
# outputs of the reference kernels themselves, compiled with nvcc -O2 and run on an H200
CUDA_FIXTURE = FIXTURE.with_name("roitr_pointops_cuda.npz")
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


def _fma32(a, b, c):
    """Exactly rounded fp32 a * b + c (round half to even), by exact rational arithmetic."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    r = np.float32(float(exact))
    lo, hi = ((r, np.nextafter(r, np.float32(np.inf))) if Fraction(float(r)) <= exact
              else (np.nextafter(r, np.float32(-np.inf)), r))
    d_lo, d_hi = exact - Fraction(float(lo)), Fraction(float(hi)) - exact
    if d_lo != d_hi:
        return lo if d_lo < d_hi else hi
    return lo if int(lo.view(np.int32)) % 2 == 0 else hi


def _sq(q, p):
    # the CUDA build's squared distance: fma(dz, dz, fma(dx, dx, dy*dy)) in fp32
    dx, dy, dz = (np.float32(q[i]) - np.float32(p[i]) for i in range(3))
    return _fma32(dz, dz, _fma32(dx, dx, np.float32(dy * dy)))


def _brute_knn(pts, q, k):
    return np.sort(np.array([_sq(q, p) for p in pts], np.float32))[:k]


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
    pts = rng.integers(0, 6, size=(200, 3)).astype(np.float32) * np.float32(0.01)
    got = farthest_point_sample_pointops(pts, 40).numpy()
    block = pointops_block_size(200)
    bits = block.bit_length() - 1
    min_d2 = np.full(200, np.float32(1e10), np.float32)
    want = [0]
    for _ in range(39):
        o = pts[want[-1]]
        d = np.array([_sq(p, o) for p in pts], np.float32)
        min_d2 = np.minimum(min_d2, d)
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


@pytest.fixture(scope="module")
def cuda_outputs():
    with np.load(CUDA_FIXTURE) as fx:
        return dict(fx)


@pytest.mark.parametrize("name", ["lat", "dense", "big", "rand"])
def test_equal_to_the_compiled_cuda_kernels(cuda_outputs, name):
    pts = cuda_outputs[f"{name}/pts"]
    for key in [k for k in cuda_outputs if k.startswith(f"{name}/knn")]:
        k = int(key.split("knn")[1])
        dist, idx = knn_pointops(pts, pts, k)
        np.testing.assert_array_equal(idx.numpy(), cuda_outputs[key].astype(np.int64))
        # the squared distances are bit-identical too (sqrt of the same fp32 numbers)
        np.testing.assert_array_equal(dist.numpy(), torch.sqrt(torch.from_numpy(cuda_outputs[f"{name}/d2_{k}"])).numpy())
    want = cuda_outputs[f"{name}/fps"]
    np.testing.assert_array_equal(farthest_point_sample_pointops(pts, len(want)).numpy(), want)


def test_plain_fp32_sum_would_not_match_cuda(cuda_outputs):
    # why the FMA rule matters: on the offset lattice a plain left-to-right fp32 sum reorders ties
    pts = cuda_outputs["big/pts"][:400]
    q = pts[0]
    plain = ((np.float32(q[0]) - pts[:, 0]) ** 2 + (np.float32(q[1]) - pts[:, 1]) ** 2) + (np.float32(q[2]) - pts[:, 2]) ** 2
    fused = np.array([_sq(q, p) for p in pts], np.float32)
    assert (plain.astype(np.float32) != fused).any()
