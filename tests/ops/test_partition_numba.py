"""The numba CPU kernels of the window partition ops give exactly the torch path's output, field by field."""
import numpy as np
import pytest
import torch

from pc3d.ops.partition import _partition_numba as kernels
from pc3d.ops.partition.flattened_windows import ORDERS, flattened_window_groups, flattened_window_mappings
from pc3d.ops.partition.rotated_sets import rotated_set_pair, rotated_sets
from pc3d.ops.partition.scattered_windows import scattered_windows
from pc3d.ops.partition.sst_regions import sst_region_groups
from pc3d.ops.partition.windows import resolve_backend



def random_coords(num, shape, batch_size, seed):
    """`num` distinct random (batch, z, y, x) voxels, int32, in random row order."""
    rng = np.random.default_rng(seed)
    lin = rng.choice(batch_size * int(np.prod(shape)), size=num, replace=False)
    return torch.from_numpy(np.stack(np.unravel_index(lin, (batch_size, *shape)), 1).astype(np.int32))


def assert_identical(numba_out, torch_out, path="out"):
    if isinstance(numba_out, dict):
        assert numba_out.keys() == torch_out.keys()
        for key in numba_out:
            assert_identical(numba_out[key], torch_out[key], f"{path}[{key}]")
    elif isinstance(numba_out, (tuple, list)):
        assert type(numba_out) is type(torch_out) and len(numba_out) == len(torch_out), path
        names = getattr(numba_out, "_fields", range(len(numba_out)))
        for name, a, b in zip(names, numba_out, torch_out):
            assert_identical(a, b, f"{path}.{name}")
    else:
        assert numba_out.dtype == torch_out.dtype, (path, numba_out.dtype, torch_out.dtype)
        assert numba_out.shape == torch_out.shape, (path, numba_out.shape, torch_out.shape)
        assert torch.equal(numba_out, torch_out), path


def both(fn):
    return fn("numba"), fn("torch")


CASES = [  # (num voxels, sparse_shape, batch_size, window, shift)
    (0, (1, 30, 40), 1, (12, 12, 1), (0, 0, 0)),
    (1, (1, 30, 40), 1, (12, 12, 1), (6, 6, 0)),
    (700, (1, 60, 50), 3, (12, 12, 1), (6, 6, 0)),
    (1500, (5, 40, 40), 2, (8, 8, 3), (4, 4, 1)),
    (900, (2, 24, 24), 1, (24, 24, 2), (12, 12, 1)),  # one window holds hundreds of voxels
]


@pytest.mark.parametrize("num,shape,batch,window,shift", CASES)
@pytest.mark.parametrize("set_size", [1, 7, 36])
def test_rotated_sets_numba_equals_torch(num, shape, batch, window, shift, set_size):
    coords = random_coords(num, shape, batch, seed=num + set_size)
    assert_identical(*both(lambda b: rotated_set_pair(coords, shape, window, set_size, shift, backend=b)))
    assert_identical(*both(lambda b: rotated_sets(coords, shape, window, set_size, "x", shift, backend=b)))


@pytest.mark.parametrize("num,shape,batch,window,shift", CASES)
@pytest.mark.parametrize("group_size", [1, 16, 69])
def test_flattened_groups_numba_equals_torch(num, shape, batch, window, shift, group_size):
    coords = random_coords(num, shape, batch, seed=num + group_size)
    assert_identical(*both(lambda b: flattened_window_mappings(coords, shape, window[:2], group_size, backend=b)))


@pytest.mark.parametrize("num,shape,batch,window,shift", CASES)
def test_scattered_and_sst_numba_equal_torch(num, shape, batch, window, shift):
    coords = random_coords(num, shape, batch, seed=num)
    assert_identical(*both(lambda b: scattered_windows(coords, shape, window, shift, backend=b)))
    levels = ((8, 0, 8), (20, 8, 30), (16, 25, 1 << 40))  # overlapping ranges and a budget below its range: drops
    assert_identical(*both(lambda b: sst_region_groups(coords, shape, window, shift, levels, backend=b)))
    assert_identical(*both(lambda b: sst_region_groups(coords, shape, window, shift, backend=b)))


def test_numba_equals_torch_on_kitti(kitti_scan):
    from pc3d.ops.voxelize import dynamic_voxelize
    shape = (1, 248, 216)
    coords = dynamic_voxelize(torch.from_numpy(kitti_scan), (0.32, 0.32, 4.0), (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)).coords
    coords = coords[torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(0))]  # order of appearance matters
    assert_identical(*both(lambda b: rotated_set_pair(coords, shape, (12, 12, 1), 36, (6, 6, 0), backend=b)))
    assert_identical(*both(lambda b: flattened_window_mappings(coords, shape, (12, 12), 69, backend=b)))
    assert_identical(*both(lambda b: scattered_windows(coords, shape, (12, 12, 1), (6, 6, 0), backend=b)))
    assert_identical(*both(lambda b: sst_region_groups(coords, shape, (12, 12, 1), (6, 6, 0), backend=b)))


def test_radix_argsort_is_a_stable_sort():
    rng = np.random.default_rng(0)
    for high in (1, 2, 2048, 1 << 20, 1 << 40, 1 << 62):
        keys = rng.integers(0, high, size=5000, dtype=np.int64)
        np.testing.assert_array_equal(kernels.radix_argsort(keys), np.argsort(keys, kind="stable"))
    assert kernels.radix_argsort(np.zeros(0, np.int64)).shape == (0,)


def test_numba_backend_bad_input_matches_torch():
    shape = (1, 8, 8)
    coords = random_coords(10, shape, 2, 0)
    for backend in ("numba", "torch"):
        bad = coords.clone()
        bad[3, 2] = -1
        with pytest.raises(ValueError, match="negative"):
            rotated_sets(bad, shape, (4, 4, 1), 4, backend=backend)
        with pytest.raises(ValueError, match="negative"):
            flattened_window_groups(bad, shape, (4, 4), 4, backend=backend)
        bad[3, 2] = 8
        with pytest.raises(ValueError, match="outside sparse_shape"):
            scattered_windows(bad, shape, (4, 4, 1), backend=backend)
        with pytest.raises(ValueError, match="outside sparse_shape"):
            sst_region_groups(bad, shape, (4, 4, 1), backend=backend)
        with pytest.raises(ValueError, match="outside sparse_shape"):
            flattened_window_groups(bad, shape, (4, 4), 4, axis="y", backend=backend)
        with pytest.raises(TypeError, match="coords"):
            rotated_sets(coords.float(), shape, (4, 4, 1), 4, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        rotated_sets(coords, shape, (4, 4, 1), 4, backend="cuda")


def test_backend_resolution():
    coords = random_coords(5, (1, 8, 8), 1, 0)
    assert resolve_backend("auto", coords) == "numba"
    assert resolve_backend("torch", coords) == "torch"
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        assert resolve_backend("auto", coords.cuda()) == "torch"
        with pytest.raises(ValueError, match="CPU only"):
            resolve_backend("numba", coords.cuda())
    assert set(ORDERS) == set(flattened_window_mappings(coords, (1, 8, 8), (4, 4), 4))
