"""dynamic_voxelize's `order` option and its two numba algorithms for sorted voxels.

"sorted" has three numba paths (a dense cell table on small grids, a radix sort of the points' keys on dense
grids, hash + sort of the voxel keys otherwise), chosen from cells per point and an estimate of voxels per
point: all must give the same output as each other and as the torch backend. "first_come" must be spconv's `generate_voxel_with_id` order, row for row.
"""
import numpy as np
import pytest
import torch

import pc3d.ops.voxelize as voxelize
from pc3d.ops import _voxelize_numba as kernels
from pc3d.ops.voxelize import DynamicVoxels, dynamic_voxelize

KITTI_PILLAR = dict(voxel_size=[0.32, 0.32, 6], point_range=[-74.88, -74.88, -2, 74.88, 74.88, 4])
NUSC_VOXEL = dict(voxel_size=[0.075, 0.075, 0.2], point_range=[-54, -54, -5, 54, 54, 3])
FIELDS = ("coords", "point_voxel", "counts", "num_dropped_nonfinite")


PATHS = {  # forced path -> (_CELL_TABLE_MAX_PER_POINT, _POINT_SORT_MIN_FRACTION, kernel that must run)
    "cell_table": (10**12, 2.0, "sorted_voxels_by_cell_table"),
    "point_sort": (0, -1.0, "sorted_voxels_by_point_sort"),
    "hash": (0, 2.0, "sorted_voxels"),
}


def numba_sorted(monkeypatch, path: str, *args, **kwargs) -> DynamicVoxels:
    """Sorted numba voxels from one forced path (a key of PATHS)."""
    table_max, fraction, kernel = PATHS[path]
    monkeypatch.setattr(voxelize, "_CELL_TABLE_MAX_PER_POINT", table_max)
    monkeypatch.setattr(voxelize, "_POINT_SORT_MIN_FRACTION", fraction)
    calls = []
    for name in {k for _, _, k in PATHS.values()}:
        original = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    out = dynamic_voxelize(*args, backend="numba", **kwargs)
    monkeypatch.undo()
    assert calls == [kernel], f"forced {path}, ran {calls}"
    return out


def assert_same(a: DynamicVoxels, b: DynamicVoxels):
    for name in FIELDS:
        left, right = getattr(a, name), getattr(b, name)
        assert (torch.equal(left, right) if isinstance(left, torch.Tensor) else left == right), name


def random_cloud(seed: int):
    """Clustered points on a lattice (shared voxels, points on faces), some non-finite, 1-3 samples."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 400))
    centres = rng.uniform(-1.5, 2.5, size=(max(n // 8, 1), 3))
    xyz = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.3, size=(n, 3))
    xyz = np.round(xyz / 0.05) * 0.05
    points = np.concatenate([xyz, rng.uniform(0, 1, size=(n, 1))], axis=1).astype(np.float32)
    for row in rng.integers(0, max(n, 1), size=min(n, 4)):
        points[row, rng.integers(0, 3)] = rng.choice([np.nan, np.inf, -np.inf])
    batch = rng.integers(0, int(rng.integers(1, 4)), n) if rng.random() < 0.5 else None
    voxel_size = [float(rng.choice([0.05, 0.1, 0.25, 0.5])) for _ in range(3)]
    return points, voxel_size, [-1.0, -0.5, -1.0, 1.5, 2.0, 1.0], batch


@pytest.mark.parametrize("seed", range(40))
def test_sorted_paths_and_backends_agree(monkeypatch, seed):
    points, voxel_size, point_range, batch = random_cloud(seed)
    args = (points, voxel_size, point_range)
    by_sort = numba_sorted(monkeypatch, "point_sort", *args, batch_index=batch)
    assert_same(by_sort, numba_sorted(monkeypatch, "hash", *args, batch_index=batch))
    assert_same(by_sort, numba_sorted(monkeypatch, "cell_table", *args, batch_index=batch))
    assert_same(by_sort, dynamic_voxelize(*args, batch_index=batch, backend="numba"))  # unforced choice
    assert_same(by_sort, dynamic_voxelize(*args, batch_index=batch, backend="torch"))
    coords = by_sort.coords.long()
    flat = ((coords[:, 0] * 100 + coords[:, 1]) * 100 + coords[:, 2]) * 100 + coords[:, 3]
    assert torch.all(flat[1:] > flat[:-1]), "sorted voxels must be strictly ascending (batch, z, y, x)"
    assert by_sort.num_dropped_nonfinite == int((~np.isfinite(points[:, :3])).any(1).sum())


@pytest.mark.parametrize("seed", range(40))
def test_first_come_is_the_sorted_voxels_renumbered(monkeypatch, seed):
    points, voxel_size, point_range, batch = random_cloud(seed)
    args = (points, voxel_size, point_range)
    sorted_ = dynamic_voxelize(*args, batch_index=batch, backend="numba")
    first = [dynamic_voxelize(*args, batch_index=batch, backend=b, order="first_come") for b in ("numba", "torch")]
    assert_same(first[0], first[1])
    for table_max, kernel in ((0, "first_come_voxels"), (10**12, "first_come_voxels_by_cell_table")):
        monkeypatch.setattr(voxelize, "_CELL_TABLE_MAX_PER_POINT", table_max)
        calls = []
        original = getattr(kernels, kernel)
        monkeypatch.setattr(kernels, kernel, lambda *a, _f=original: calls.append(1) or _f(*a))
        assert_same(first[1], dynamic_voxelize(*args, batch_index=batch, backend="numba", order="first_come"))
        monkeypatch.undo()
        assert calls == [1], f"{kernel} did not run"
    first = first[0]
    assert first.order == "first_come" and sorted_.order == "sorted"
    valid = sorted_.point_voxel >= 0
    assert torch.equal(valid, first.point_voxel >= 0)
    # the same voxel for every point, the same counts per voxel
    assert torch.equal(first.coords[first.point_voxel[valid]], sorted_.coords[sorted_.point_voxel[valid]])
    assert first.coords.shape == sorted_.coords.shape
    rows = torch.full((first.coords.shape[0],), -1, dtype=torch.int64)
    rows[first.point_voxel[valid]] = sorted_.point_voxel[valid]
    assert torch.equal(first.counts, sorted_.counts[rows])
    # voxel v's first point comes before voxel v+1's
    ids = torch.nonzero(valid).reshape(-1)
    first_point = torch.full((first.coords.shape[0],), len(points)).scatter_reduce(
        0, first.point_voxel[valid], ids, reduce="amin")
    assert torch.all(first_point[1:] > first_point[:-1])


@pytest.mark.parametrize("config", [NUSC_VOXEL, KITTI_PILLAR], ids=["dense-nusc-voxel", "pillar"])
def test_real_scan_sorted_paths_agree_and_first_come_is_spconv(monkeypatch, kitti_scan, config):
    from spconv.pytorch.utils import PointToVoxel

    by_sort = numba_sorted(monkeypatch, "point_sort", kitti_scan, **config)
    assert_same(by_sort, numba_sorted(monkeypatch, "hash", kitti_scan, **config))
    if config is KITTI_PILLAR:  # a dense table of the 83 M-cell voxel grid would take 330 MB
        assert_same(by_sort, numba_sorted(monkeypatch, "cell_table", kitti_scan, **config))
    generator = PointToVoxel(config["voxel_size"], config["point_range"], 4, kitti_scan.shape[0], 1)
    _, sp_coords, _, sp_point_voxel = generator.generate_voxel_with_id(torch.from_numpy(kitti_scan))
    for backend in ("numba", "torch"):
        first = dynamic_voxelize(kitti_scan, **config, backend=backend, order="first_come")
        assert torch.equal(first.coords[:, 1:], sp_coords), backend
        assert torch.equal(first.point_voxel, sp_point_voxel.long()), backend


def test_default_path_choice_on_real_scans(kitti_scan):
    """Pillars (1.8 cells per point) take the cell table; the dense grid (0.58 voxels per point) the point sort."""
    pillar = voxelize.voxel_grid(**KITTI_PILLAR)
    assert pillar.num_cells <= voxelize._CELL_TABLE_MAX_PER_POINT * len(kitti_scan)
    grid = voxelize.voxel_grid(**NUSC_VOXEL)
    assert grid.num_cells > voxelize._CELL_TABLE_MAX_PER_POINT * len(kitti_scan)
    keys = kernels.point_voxel_keys(kitti_scan, grid.range_min, grid.voxel_size, *grid.grid_xyz)
    estimate, sampled = kernels.occupied_fraction(keys)
    exact = np.unique(keys[keys >= 0]).shape[0] / int((keys >= 0).sum())
    assert sampled > 1000 and abs(estimate - exact) < 0.05, (estimate, exact)
    assert estimate >= voxelize._POINT_SORT_MIN_FRACTION


def test_order_is_validated():
    points = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="order"):
        dynamic_voxelize(points, [1, 1, 1], [0, 0, 0, 2, 2, 2], order="unsorted")
    with pytest.raises(ValueError, match="order"):
        DynamicVoxels(torch.zeros((0, 4), dtype=torch.int32), torch.zeros(0, dtype=torch.int64),
                      torch.zeros(0, dtype=torch.int32), 0, "random")


def test_voxelizer_asks_for_sorted_voxels(kitti_scan):
    """Detectors depend on the sorted order (window partitions keep row order inside a window)."""
    from pc3d.models.vfe import Voxelizer

    points = torch.from_numpy(kitti_scan)
    batch = torch.cat([torch.zeros(len(points) // 2), torch.ones(len(points) - len(points) // 2)])[:, None]
    voxelizer = Voxelizer(NUSC_VOXEL["voxel_size"], NUSC_VOXEL["point_range"], mode="dynamic")
    coords = voxelizer(torch.cat([batch, points], dim=1), batch_size=2).coords.long()
    flat = ((coords[:, 0] * 100 + coords[:, 1]) * 2000 + coords[:, 2]) * 2000 + coords[:, 3]
    assert torch.all(flat[1:] > flat[:-1])
