"""Ops on the device under test equal the CPU: voxelization (torch on the device vs numba on the CPU, hard and
dynamic, real scans), the four window partitions (torch on the device vs numba), rotated IoU, NMS and circle NMS."""
import numpy as np
import pytest
import torch

from pc3d.ops import box_geometry
from pc3d.ops.partition.flattened_windows import flattened_window_mappings
from pc3d.ops.partition.rotated_sets import rotated_set_pair, rotated_sets
from pc3d.ops.partition.scattered_windows import scattered_windows
from pc3d.ops.partition.sst_regions import sst_region_groups
from pc3d.ops.voxelize import dynamic_voxelize, hard_voxelize

pytestmark = pytest.mark.gpu

# (voxel_size, point_range) of the configs' grids: KITTI voxels / pillars, Waymo pillars, nuScenes voxels
GRIDS = {
    "kitti_voxel": ([0.05, 0.05, 0.1], [0.0, -40.0, -3.0, 70.4, 40.0, 1.0]),
    "kitti_pillar": ([0.16, 0.16, 4.0], [0.0, -39.68, -3.0, 69.12, 39.68, 1.0]),
    "waymo_pillar": ([0.32, 0.32, 6.0], [-74.88, -74.88, -2.0, 74.88, 74.88, 4.0]),
    "nuscenes_voxel": ([0.075, 0.075, 0.2], [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]),
}


def assert_same(got, want, path="out"):
    """Field by field: same dtype, shape and values (`got` may live on another device)."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for key in want:
            assert_same(got[key], want[key], f"{path}[{key}]")
    elif isinstance(want, (tuple, list)):
        assert len(got) == len(want), path
        names = getattr(want, "_fields", range(len(want)))
        for name, a, b in zip(names, got, want):
            assert_same(a, b, f"{path}.{name}")
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape, (path, got.dtype, want.dtype, got.shape, want.shape)
        assert torch.equal(got.cpu(), want.cpu()), path
    else:
        assert got == want, path


@pytest.fixture(scope="module")
def scans(kitti_scan, nuscenes_scan):
    return {"kitti": kitti_scan, "nuscenes": nuscenes_scan[:, :4]}


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("scan_name", ["kitti", "nuscenes"])
def test_hard_voxelization_device_torch_equals_cpu_numba(device, scans, scan_name, grid):
    voxel_size, point_range = GRIDS[grid]
    points = scans[scan_name]
    want = hard_voxelize(points, voxel_size, point_range, 5, 60000, backend="numba")
    got = hard_voxelize(torch.from_numpy(points).to(device), voxel_size, point_range, 5, 60000, backend="torch")
    assert got.voxels.device.type == device.type and len(want.coords) > 1000
    assert_same(tuple(got), tuple(want))


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("scan_name", ["kitti", "nuscenes"])
def test_dynamic_voxelization_device_torch_equals_cpu_numba(device, scans, scan_name, grid):
    voxel_size, point_range = GRIDS[grid]
    points = scans[scan_name]
    # two samples: the scan and its mirror image, batch index per point
    both = np.concatenate([points, points * np.array([1, -1, 1, 1], np.float32)])
    batch = np.repeat(np.arange(2), len(points))
    want = dynamic_voxelize(both, voxel_size, point_range, batch_index=batch, backend="numba")
    got = dynamic_voxelize(torch.from_numpy(both).to(device), voxel_size, point_range,
                           batch_index=torch.from_numpy(batch).to(device), backend="torch")
    assert got.coords.device.type == device.type and len(want.coords) > 1000
    assert_same(tuple(got), tuple(want))


@pytest.fixture(scope="module")
def pillar_coords(kitti_scan):
    """The KITTI scan pillarized on the Waymo grid, twice (batch 2), in a shuffled row order."""
    voxel_size, point_range = GRIDS["waymo_pillar"]
    both = np.concatenate([kitti_scan, kitti_scan * np.array([-1, 1, 1, 1], np.float32)])
    batch = np.repeat(np.arange(2), len(kitti_scan))
    coords = dynamic_voxelize(both, voxel_size, point_range, batch_index=batch, backend="numba").coords
    return coords[torch.randperm(len(coords), generator=torch.Generator().manual_seed(0))], (1, 468, 468)


def random_coords(num, shape, batch_size, seed):
    rng = np.random.default_rng(seed)
    lin = rng.choice(batch_size * int(np.prod(shape)), size=num, replace=False)
    return torch.from_numpy(np.stack(np.unravel_index(lin, (batch_size, *shape)), 1).astype(np.int32)), shape


@pytest.fixture(scope="module", params=["kitti_pillars", "random_voxels"])
def coords_case(request, pillar_coords):
    if request.param == "kitti_pillars":
        return pillar_coords
    return random_coords(20000, (8, 200, 200), 2, seed=3)


def test_dsvt_rotated_sets_device_equals_numba(device, coords_case):
    coords, shape = coords_case
    window = (12, 12, 1) if shape[0] == 1 else (12, 12, 4)
    want = rotated_set_pair(coords, shape, window, 36, (6, 6, 0), backend="numba")
    assert_same(rotated_set_pair(coords.to(device), shape, window, 36, (6, 6, 0), backend="torch"), want)
    want = rotated_sets(coords, shape, window, 36, "y", (0, 0, 0), backend="numba")
    assert_same(rotated_sets(coords.to(device), shape, window, 36, "y", (0, 0, 0), backend="torch"), want)


def test_flatformer_groups_device_equal_numba(device, coords_case):
    coords, shape = coords_case
    want = flattened_window_mappings(coords, shape, (13, 13), 69, backend="numba")
    assert_same(flattened_window_mappings(coords.to(device), shape, (13, 13), 69, backend="torch"), want)


def test_scattered_windows_and_sst_regions_device_equal_numba(device, coords_case):
    coords, shape = coords_case
    window = (12, 12, 1) if shape[0] == 1 else (12, 12, 4)
    want = scattered_windows(coords, shape, window, (6, 6, 0), backend="numba")
    assert_same(scattered_windows(coords.to(device), shape, window, (6, 6, 0), backend="torch"), want)
    levels = ((30, 0, 30), (60, 30, 60), (100, 60, 1 << 40))
    want = sst_region_groups(coords, shape, window, (6, 6, 0), levels, backend="numba")
    assert_same(sst_region_groups(coords.to(device), shape, window, (6, 6, 0), levels, backend="torch"), want)


def random_boxes(num, seed, spread=30.0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-spread, spread, (num, 2))
    centres[: num // 2] = centres[: num // 2] / 10  # a crowded half: many overlaps
    return np.column_stack([centres, rng.uniform(-1, 1, num), rng.uniform(0.5, 5, (num, 3)),
                            rng.uniform(-np.pi, np.pi, num)])


def test_rotated_iou_bev_and_3d_device_equal_cpu(device):
    a, b = random_boxes(300, 0), random_boxes(200, 1)
    for fn in (box_geometry.box_iou_bev, box_geometry.box_iou_3d):
        want = fn(torch.from_numpy(a), torch.from_numpy(b))  # numba, float64
        got = fn(torch.from_numpy(a).to(device), torch.from_numpy(b).to(device))
        assert got.device.type == device.type and float(want.max()) > 0.5
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("threshold", [0.1, 0.5])
def test_nms_rotated_and_circle_device_equal_cpu(device, threshold):
    boxes = random_boxes(2000, 2)
    scores = np.random.default_rng(3).random(2000)
    scores[:10] = 0.5  # ties keep the input order on both
    b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
    want = box_geometry.nms_rotated(b, s, threshold, pre_max_size=1500, post_max_size=300)
    got = box_geometry.nms_rotated(b.to(device), s.to(device), threshold, pre_max_size=1500, post_max_size=300)
    assert got.device.type == device.type and 10 < len(want) <= 300
    assert torch.equal(got.cpu(), want)
    want = box_geometry.nms_circle(b, s, 2.0 * threshold, post_max_size=300)
    got = box_geometry.nms_circle(b.to(device), s.to(device), 2.0 * threshold, post_max_size=300)
    assert len(want) > 10 and torch.equal(got.cpu(), want)
