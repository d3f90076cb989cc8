"""pc3d.ops.voxelize against spconv's PointToVoxel (real scans), a brute-force numpy reference
(hypothesis), and across the numba / torch backends."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

from pc3d.ops.voxelize import (
    dynamic_voxelize,
    filter_points_in_range,
    hard_voxelize,
    point_offsets_to_cluster_center,
    point_offsets_to_voxel_center,
    voxel_centers,
    voxel_grid,
    voxel_reduce,
)

BACKENDS = ["numba", "torch"]

KITTI_VOXEL = dict(voxel_size=[0.1, 0.1, 0.15], point_range=[0, -40, -3, 70.4, 40, 1])
KITTI_PILLAR = dict(voxel_size=[0.32, 0.32, 6], point_range=[-74.88, -74.88, -2, 74.88, 74.88, 4])
NUSC_VOXEL = dict(voxel_size=[0.075, 0.075, 0.2], point_range=[-54, -54, -5, 54, 54, 3])
NUSC_PILLAR = dict(voxel_size=[0.2, 0.2, 8], point_range=[-54, -54, -5, 54, 54, 3])


# ------------------------------------------------------------------------------ brute-force reference


def reference_hard(points, voxel_size, point_range, max_points, max_voxels):
    """Literal per-point loop of the documented rule, in float32 numpy scalars."""
    low = np.asarray(point_range[:3], np.float32)
    high = np.asarray(point_range[3:], np.float32)
    size = np.asarray(voxel_size, np.float32)
    grid = [int(math.floor(float(q) + 0.5)) for q in (high - low) / size]
    rows, voxels, counts, coords = {}, [], [], []
    for p in np.asarray(points, np.float32):
        if not np.all(np.isfinite(p[:3])):
            continue
        index = [int(np.floor((p[a] - low[a]) / size[a])) for a in range(3)]
        if not all(0 <= index[a] < grid[a] for a in range(3)):
            continue
        key = (index[2], index[1], index[0])
        if key not in rows:
            if len(rows) >= max_voxels:
                continue
            rows[key] = len(rows)
            voxels.append(np.zeros((max_points, points.shape[1]), np.float32))
            counts.append(0)
            coords.append(key)
        r = rows[key]
        if counts[r] < max_points:
            voxels[r][counts[r]] = p
            counts[r] += 1
    c = points.shape[1]
    return (
        np.stack(voxels) if voxels else np.zeros((0, max_points, c), np.float32),
        np.asarray(coords, np.int32).reshape(-1, 3),
        np.asarray(counts, np.int32),
    )


def assert_hard_equal(out, expected):
    voxels, coords, num_points = (t.cpu().numpy() if isinstance(t, torch.Tensor) else t for t in out)
    ev, ec, en = (t.cpu().numpy() if isinstance(t, torch.Tensor) else t for t in expected)
    np.testing.assert_array_equal(coords, ec)
    np.testing.assert_array_equal(num_points, en)
    np.testing.assert_array_equal(voxels, ev)


# ------------------------------------------------------------------------------------------ spconv


_SPCONV_RESULTS = {}


def spconv_hard_cached(scan_name, points, voxel_size, point_range, max_points, max_voxels):
    """spconv's result, computed once per (scan, config) and shared by the two backend cases."""
    key = (scan_name, tuple(voxel_size), tuple(point_range), max_points, max_voxels)
    if key not in _SPCONV_RESULTS:
        _SPCONV_RESULTS[key] = spconv_hard(points, voxel_size, point_range, max_points, max_voxels)
    return _SPCONV_RESULTS[key]


def spconv_hard(points, voxel_size, point_range, max_points, max_voxels):
    from spconv.pytorch.utils import PointToVoxel

    generator = PointToVoxel(voxel_size, point_range, points.shape[1], max_voxels, max_points)
    return generator(torch.from_numpy(np.ascontiguousarray(points)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "config, max_points, max_voxels",
    [
        (KITTI_VOXEL, 5, 40000),
        (KITTI_VOXEL, 3, 8000),  # both caps hit
        (KITTI_PILLAR, 32, 40000),
    ],
)
def test_hard_matches_spconv_on_kitti(kitti_scan, backend, config, max_points, max_voxels):
    expected = spconv_hard_cached("kitti", kitti_scan, config["voxel_size"], config["point_range"], max_points, max_voxels)
    out = hard_voxelize(kitti_scan, **config, max_points_per_voxel=max_points, max_voxels=max_voxels, backend=backend)
    assert out.voxels.shape[0] > 1000
    assert_hard_equal(out, expected)
    assert out.num_dropped_nonfinite == 0
    if max_voxels == 8000:
        assert out.voxels.shape[0] == 8000 and int(out.num_points.max()) == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config, max_points, max_voxels", [(NUSC_VOXEL, 10, 60000), (NUSC_PILLAR, 20, 30000)])
def test_hard_matches_spconv_on_nuscenes(nuscenes_scan, backend, config, max_points, max_voxels):
    expected = spconv_hard_cached("nuscenes", nuscenes_scan, config["voxel_size"], config["point_range"], max_points, max_voxels)
    out = hard_voxelize(nuscenes_scan, **config, max_points_per_voxel=max_points, max_voxels=max_voxels, backend=backend)
    assert out.voxels.shape == (expected[0].shape[0], max_points, 5)
    assert_hard_equal(out, expected)


@pytest.mark.parametrize("config", [KITTI_VOXEL, KITTI_PILLAR])
def test_dynamic_matches_spconv_point_assignment_on_kitti(kitti_scan, config):
    """spconv's per-point voxel id (uncapped) names the same voxel as our sorted dynamic voxels."""
    from spconv.pytorch.utils import PointToVoxel

    # one point stored per voxel keeps spconv's buffer small; its per-point voxel id is not capped
    generator = PointToVoxel(config["voxel_size"], config["point_range"], 4, kitti_scan.shape[0], 1)
    _, sp_coords, _, sp_point_voxel = generator.generate_voxel_with_id(torch.from_numpy(kitti_scan))
    sp_counts = torch.bincount(sp_point_voxel[sp_point_voxel >= 0], minlength=sp_coords.shape[0]).int()
    results = [dynamic_voxelize(kitti_scan, **config, backend=b) for b in BACKENDS]
    for name in ("coords", "point_voxel", "counts"):
        assert torch.equal(getattr(results[0], name), getattr(results[1], name)), name
    dyn = results[0]
    assert dyn.coords.shape[0] == sp_coords.shape[0]
    valid = sp_point_voxel >= 0
    assert torch.equal(valid, dyn.point_voxel >= 0)
    # same voxel for every point, and the same counts
    assert torch.equal(dyn.coords[dyn.point_voxel[valid], 1:], sp_coords[sp_point_voxel[valid]])
    order = torch.argsort(sp_coords[:, 0].long() * 10**8 + sp_coords[:, 1].long() * 10**4 + sp_coords[:, 2].long())
    assert torch.equal(dyn.coords[:, 1:], sp_coords[order])
    assert torch.equal(dyn.counts, sp_counts[order])


def test_pillars_are_one_voxel_tall(kitti_scan):
    out = hard_voxelize(kitti_scan, **KITTI_PILLAR, max_points_per_voxel=32, max_voxels=40000)
    grid = voxel_grid(**KITTI_PILLAR)
    assert grid.spatial_shape == (1, 468, 468)
    assert torch.all(out.coords[:, 0] == 0)
    dyn = dynamic_voxelize(kitti_scan, **KITTI_PILLAR)
    # one pillar per occupied BEV cell, every in-range point in the pillar under it
    kept = dyn.point_voxel >= 0
    xy = torch.from_numpy(kitti_scan[:, :2])[kept]
    cell = torch.floor((xy - torch.tensor([-74.88, -74.88])) / 0.32).long()
    assert torch.equal(dyn.coords[dyn.point_voxel[kept]][:, [3, 2]].long(), cell)
    assert dyn.coords.shape[0] == torch.unique(cell[:, 1] * 468 + cell[:, 0]).shape[0]


# ----------------------------------------------------------------------- hypothesis vs reference


@st.composite
def clouds(draw):
    n = draw(st.integers(0, 120))
    channels = draw(st.integers(3, 5))
    # coordinates on a 0.05 m lattice so several points share voxels and some land exactly on faces
    lattice = draw(st.lists(st.integers(-30, 50), min_size=n * 3, max_size=n * 3))
    xyz = np.asarray(lattice, np.float32).reshape(n, 3) * np.float32(0.05)
    extra = np.asarray(draw(st.lists(st.floats(-5, 5, width=32), min_size=n * (channels - 3), max_size=n * (channels - 3))), np.float32)
    points = np.concatenate([xyz, extra.reshape(n, channels - 3)], axis=1)
    if n and draw(st.booleans()):
        bad = draw(st.lists(st.integers(0, n - 1), max_size=5))
        for row in bad:
            points[row, draw(st.integers(0, 2))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    voxel_size = [draw(st.sampled_from([0.1, 0.25, 0.3, 0.5])) for _ in range(3)]
    point_range = [-1.0, -0.5, -1.0, 1.5, 2.0, 1.0]
    return points, voxel_size, point_range


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clouds(), st.integers(1, 4), st.integers(1, 40))
def test_hard_matches_reference_and_properties(cloud, max_points, max_voxels):
    points, voxel_size, point_range = cloud
    expected = reference_hard(points, voxel_size, point_range, max_points, max_voxels)
    outs = [hard_voxelize(points, voxel_size, point_range, max_points, max_voxels, backend=b) for b in BACKENDS]
    for out in outs:
        assert_hard_equal(out, expected)
        assert out.num_dropped_nonfinite == int((~np.isfinite(points[:, :3])).any(1).sum())
    voxels, coords, num_points = outs[0]
    # caps respected
    assert voxels.shape[0] <= max_voxels and (num_points.numel() == 0 or int(num_points.max()) <= max_points)
    assert coords.shape[0] == torch.unique(coords, dim=0).shape[0]
    # every stored point lies in the voxel its coordinates say, padding is zero
    lows = torch.tensor(point_range[:3]) + coords.flip(1).float() * torch.tensor(voxel_size)
    for v in range(voxels.shape[0]):
        stored = voxels[v, : num_points[v], :3]
        index = torch.floor((stored - torch.tensor(point_range[:3])) / torch.tensor(voxel_size, dtype=torch.float32))
        assert torch.equal(index.flip(1).int(), coords[v].expand_as(index))
        assert torch.all(stored >= lows[v] - 1e-5)
        assert torch.all(voxels[v, num_points[v]:] == 0)

    dyn = [dynamic_voxelize(points, voxel_size, point_range, backend=b) for b in BACKENDS]
    for name in ("coords", "point_voxel", "counts"):
        assert torch.equal(getattr(dyn[0], name), getattr(dyn[1], name)), name
    d = dyn[0]
    in_range = d.point_voxel >= 0
    assert int(d.counts.sum()) == int(in_range.sum())
    assert torch.equal(torch.bincount(d.point_voxel[in_range], minlength=d.coords.shape[0]).int(), d.counts)
    # coords sorted lexicographically and unique
    flat = ((d.coords[:, 1].long() * 1000 + d.coords[:, 2]) * 1000 + d.coords[:, 3])
    assert torch.all(flat[1:] > flat[:-1])
    # dynamic == hard when no cap binds
    uncapped = hard_voxelize(points, voxel_size, point_range, max(len(points), 1), max(len(points), 1))
    assert uncapped.coords.shape[0] == d.coords.shape[0]
    first_come_to_sorted = [int(torch.nonzero((d.coords[:, 1:] == c).all(1))[0]) for c in uncapped.coords]
    assert torch.equal(d.counts[first_come_to_sorted], uncapped.num_points)


def test_points_on_faces():
    """min face in, max face out (range divisible by the voxel size)."""
    points = np.array([[0, 0, 0, 1], [1, 1, 1, 2], [0.5, 1, 0.5, 3], [0.999, 0.999, 0.999, 4]], np.float32)
    for backend in BACKENDS:
        out = hard_voxelize(points, [0.5, 0.5, 0.5], [0, 0, 0, 1, 1, 1], 4, 10, backend=backend)
        assert out.coords.tolist() == [[0, 0, 0], [1, 1, 1]]
        assert out.num_points.tolist() == [1, 1]


# ------------------------------------------------------------------------------------- input policy


def test_nonfinite_points_dropped_and_counted():
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 3, size=(500, 4)).astype(np.float32)
    points[::7, 0] = np.nan
    points[3::11, 2] = np.inf
    points[5, 3] = np.nan  # a non-finite feature is not a reason to drop
    bad = ~np.isfinite(points[:, :3]).all(1)
    clean = points[~bad]
    for backend in BACKENDS:
        out = hard_voxelize(points, [0.5] * 3, [0, 0, 0, 2, 2, 2], 100, 1000, backend=backend)
        ref = hard_voxelize(clean, [0.5] * 3, [0, 0, 0, 2, 2, 2], 100, 1000, backend=backend)
        assert out.num_dropped_nonfinite == int(bad.sum()) > 0
        assert torch.equal(out.coords, ref.coords) and torch.equal(out.num_points, ref.num_points)
        assert torch.equal(out.voxels.isnan(), ref.voxels.isnan())
        dyn = dynamic_voxelize(points, [0.5] * 3, [0, 0, 0, 2, 2, 2], backend=backend)
        assert dyn.num_dropped_nonfinite == int(bad.sum())
        assert torch.all(dyn.point_voxel[torch.from_numpy(bad)] == -1)


def test_float64_noncontiguous_and_torch_inputs():
    rng = np.random.default_rng(1)
    base = rng.uniform(-1, 3, size=(300, 6)).astype(np.float32)
    points = base[:, ::2][:, [0, 1, 2]]  # non-contiguous view
    assert not points.flags["C_CONTIGUOUS"]
    args = ([0.3, 0.3, 0.3], [0, 0, 0, 2, 2, 2], 5, 100)
    expected = reference_hard(np.ascontiguousarray(points), *args)
    for backend in BACKENDS:
        assert_hard_equal(hard_voxelize(points, *args, backend=backend), expected)
        assert_hard_equal(hard_voxelize(points.astype(np.float64), *args, backend=backend), expected)
        tensor = torch.from_numpy(base)[:, ::2][:, [0, 1, 2]].t().contiguous().t()  # column-major
        out = hard_voxelize(tensor.requires_grad_(False), *args, backend=backend)
        assert_hard_equal(out, expected)
        voxels, coords, num_points = out  # unpacks as a 3-tuple
        assert voxels.dtype == torch.float32 and coords.dtype == torch.int32 and num_points.dtype == torch.int32


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_cloud_gives_zero_voxels(backend):
    out = hard_voxelize(np.zeros((0, 4), np.float32), [0.1] * 3, [0, 0, 0, 1, 1, 1], 5, 10, backend=backend)
    assert out.voxels.shape == (0, 5, 4) and out.coords.shape == (0, 3) and out.num_points.shape == (0,)
    dyn = dynamic_voxelize(torch.zeros((0, 3)), [0.1] * 3, [0, 0, 0, 1, 1, 1], backend=backend)
    assert dyn.coords.shape == (0, 4) and dyn.point_voxel.shape == (0,) and dyn.counts.shape == (0,)
    out_of_range = np.full((4, 3), 5.0, np.float32)
    assert hard_voxelize(out_of_range, [0.1] * 3, [0, 0, 0, 1, 1, 1], 5, 10, backend=backend).voxels.shape[0] == 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(points=np.zeros((5,), np.float32)), "points"),
        (dict(points=np.zeros((5, 2), np.float32)), "points"),
        (dict(points=np.zeros((5, 4), np.int32)), "points"),
        (dict(points=torch.zeros((5, 4), dtype=torch.int64)), "points"),
        (dict(points=[[0.0, 0.0, 0.0]]), "points"),
        (dict(voxel_size=[0.1, 0.0, 0.1]), "voxel_size"),
        (dict(voxel_size=[0.1, -0.1, 0.1]), "voxel_size"),
        (dict(voxel_size=[0.1, 0.1]), "voxel_size"),
        (dict(voxel_size=[0.1, float("nan"), 0.1]), "voxel_size"),
        (dict(point_range=[0, 0, 0, 1, 0, 1]), "point_range"),
        (dict(point_range=[0, 2, 0, 1, 1, 1]), "point_range"),
        (dict(point_range=[0, 0, 0, 1, 1]), "point_range"),
        (dict(max_points_per_voxel=0), "max_points_per_voxel"),
        (dict(max_points_per_voxel=2.5), "max_points_per_voxel"),
        (dict(max_voxels=0), "max_voxels"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_inputs_raise_value_error(kwargs, name):
    args = dict(points=np.zeros((5, 4), np.float32), voxel_size=[0.1] * 3, point_range=[0, 0, 0, 1, 1, 1],
                max_points_per_voxel=5, max_voxels=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        hard_voxelize(**args)
    if name not in ("max_points_per_voxel", "max_voxels"):
        dyn_args = {k: v for k, v in args.items() if k not in ("max_points_per_voxel", "max_voxels")}
        with pytest.raises(ValueError, match=name):
            dynamic_voxelize(**dyn_args)


def test_bad_batch_index():
    points = np.zeros((4, 3), np.float32)
    for batch, match in [(np.zeros(3, np.int64), "batch_index"), (np.array([0, 1, -1, 0]), "batch_index"),
                         (np.zeros(4, np.float32), "batch_index")]:
        with pytest.raises(ValueError, match=match):
            dynamic_voxelize(points, [0.1] * 3, [0, 0, 0, 1, 1, 1], batch_index=batch)


def test_huge_and_nonfinite_values_never_crash():
    """Values that overflow int32 after quantisation or are non-finite are dropped, not indexed."""
    points = np.array([[1e30, 0, 0], [-1e30, 0, 0], [0, 3e38, 0], [np.nan] * 3, [0.05, 0.05, 0.05]], np.float32)
    for backend in BACKENDS:
        out = hard_voxelize(points, [0.1] * 3, [0, 0, 0, 1, 1, 1], 2, 2, backend=backend)
        assert out.coords.tolist() == [[0, 0, 0]] and out.num_dropped_nonfinite == 1


# ------------------------------------------------------------------------------------ dynamic extras


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_batch_index(backend):
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 2, size=(200, 4)).astype(np.float32)
    b = rng.uniform(0, 2, size=(150, 4)).astype(np.float32)
    points = np.concatenate([a, b])
    batch = np.r_[np.zeros(200, np.int64), np.ones(150, np.int64)]
    out = dynamic_voxelize(points, [0.5] * 3, [0, 0, 0, 2, 2, 2], batch_index=batch, backend=backend)
    single = [dynamic_voxelize(p, [0.5] * 3, [0, 0, 0, 2, 2, 2], backend=backend) for p in (a, b)]
    assert out.coords.shape[0] == single[0].coords.shape[0] + single[1].coords.shape[0]
    for i, s in enumerate(single):
        rows = out.coords[:, 0] == i
        assert torch.equal(out.coords[rows, 1:], s.coords[:, 1:])
        assert torch.equal(out.counts[rows], s.counts)
    assert torch.equal(out.point_voxel[200:] - int((out.coords[:, 0] == 0).sum()), single[1].point_voxel)


def test_voxel_reduce_matches_numpy_and_is_differentiable():
    rng = np.random.default_rng(3)
    points = rng.uniform(-0.5, 2.5, size=(400, 5)).astype(np.float32)
    dyn = dynamic_voxelize(points, [0.5] * 3, [0, 0, 0, 2, 2, 2])
    v = dyn.coords.shape[0]
    index = dyn.point_voxel.numpy()
    for reduce, fn in [("mean", np.mean), ("max", np.max), ("sum", np.sum)]:
        out = voxel_reduce(torch.from_numpy(points), dyn.point_voxel, v, reduce)
        expected = np.stack([fn(points[index == r], axis=0) for r in range(v)])
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    features = torch.from_numpy(points).double().requires_grad_(True)
    mean = voxel_reduce(features, dyn.point_voxel, v, "mean")
    mean.sum().backward()
    expected_grad = np.where(index[:, None] >= 0, 1.0 / dyn.counts.numpy()[np.maximum(index, 0)][:, None], 0.0)
    np.testing.assert_allclose(features.grad.numpy(), np.broadcast_to(expected_grad, points.shape), rtol=1e-12)
    with pytest.raises(ValueError, match="reduce"):
        voxel_reduce(features, dyn.point_voxel, v, "median")
    with pytest.raises(ValueError, match="point_voxel"):
        voxel_reduce(features, dyn.point_voxel[:-1], v)


def test_voxel_centers_and_decorations():
    rng = np.random.default_rng(4)
    points = rng.uniform(-0.2, 2.2, size=(300, 4)).astype(np.float32)
    size, prange = [0.5, 0.4, 2.0], [0, 0, 0, 2, 2, 2]
    dyn = dynamic_voxelize(points, size, prange)
    centers = voxel_centers(dyn.coords, size, prange)
    hard = hard_voxelize(points, size, prange, 300, 300)
    assert torch.allclose(voxel_centers(hard.coords, size, prange)[0],
                          torch.tensor([(hard.coords[0, 2 - a].item() + 0.5) * size[a] for a in range(3)]))
    offsets = point_offsets_to_voxel_center(points, dyn.point_voxel, dyn.coords, size, prange)
    kept = dyn.point_voxel >= 0
    xyz = torch.from_numpy(points[:, :3])
    assert torch.allclose(offsets[kept], xyz[kept] - centers[dyn.point_voxel[kept]])
    assert torch.all(offsets[~kept] == 0)
    assert torch.all(offsets[kept].abs() <= torch.tensor(size) / 2 + 1e-6)
    cluster = point_offsets_to_cluster_center(points, dyn.point_voxel, dyn.coords.shape[0])
    for r in range(dyn.coords.shape[0]):
        members = dyn.point_voxel == r
        assert torch.allclose(cluster[members], xyz[members] - xyz[members].mean(0), atol=1e-6)
    assert torch.all(cluster[~kept] == 0) and cluster.shape == (300, 3)


def test_filter_points_in_range():
    points = np.array([[0, 0, 0, 1], [1, 1, 1, 2], [0.5, 0.5, np.nan, 3], [0.5, 0.99, 0.2, 4], [-0.1, 0.5, 0.5, 5]], np.float32)
    kept, mask = filter_points_in_range(points, [0, 0, 0, 1, 1, 1])
    assert mask.tolist() == [True, False, False, True, False]
    np.testing.assert_array_equal(kept, points[[0, 3]])
    kept_t, mask_t = filter_points_in_range(torch.from_numpy(points), [0, 0, 0, 1, 1, 1])
    assert mask_t.tolist() == mask.tolist() and isinstance(kept_t, torch.Tensor)
    with pytest.raises(ValueError, match="point_range"):
        filter_points_in_range(points, [0, 0, 0, 0, 1, 1])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_ten_million_points(backend):
    rng = np.random.default_rng(5)
    points = rng.uniform(-60, 60, size=(10_000_000, 4)).astype(np.float32)
    points[:, 2] = rng.uniform(-4, 2, size=10_000_000)
    config = dict(voxel_size=[0.1, 0.1, 0.2], point_range=[-54, -54, -5, 54, 54, 3])
    expected = spconv_hard(points, config["voxel_size"], config["point_range"], 5, 200_000)
    out = hard_voxelize(points, **config, max_points_per_voxel=5, max_voxels=200_000, backend=backend)
    assert_hard_equal(out, expected)
    dyn = dynamic_voxelize(points, **config, backend=backend)
    assert int(dyn.counts.sum()) == int((dyn.point_voxel >= 0).sum())


def test_linear_voxel_key_is_row_major_with_optional_batch():
    from pc3d.ops.voxelize import linear_voxel_key
    gen = torch.Generator().manual_seed(0)
    nz, ny, nx = 3, 5, 7
    b, z, y, x = (torch.randint(0, n, (50,), generator=gen) for n in (4, nz, ny, nx))
    coords = torch.stack([b, z, y, x], dim=1)
    expected = ((b * nz + z) * ny + y) * nx + x
    assert torch.equal(linear_voxel_key(coords, (nz, ny, nx)), expected)
    assert torch.equal(linear_voxel_key(coords[:, 1:], (nz, ny, nx)), (z * ny + y) * nx + x)
    # every cell of one batch gets a distinct key, in C order
    grid = torch.stack(torch.meshgrid(torch.arange(nz), torch.arange(ny), torch.arange(nx), indexing="ij"), -1)
    assert torch.equal(linear_voxel_key(grid.reshape(-1, 3), (nz, ny, nx)), torch.arange(nz * ny * nx))
    # a sequence of broadcastable columns, as the neighbour look-up passes them; the dtype is kept
    shifted = linear_voxel_key((b[:, None], z[:, None], y[:, None] + torch.tensor([0, 1]), x[:, None]), (nz, ny, nx))
    assert shifted.shape == (50, 2) and torch.equal(shifted[:, 1] - shifted[:, 0], torch.full((50,), nx))
    assert linear_voxel_key(coords.int(), (nz, ny, nx)).dtype == torch.int32
    with pytest.raises(ValueError, match="2 coordinate columns for a 3-D spatial_shape"):
        linear_voxel_key(coords[:, :2], (nz, ny, nx))
