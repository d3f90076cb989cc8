"""Window partition ops: DSVT rotated sets, FlatFormer flattened windows, ScatterFormer segments, SST regions.

Each op is checked against a plain-Python / original-formulation reference and on the real KITTI
scan voxelized into pillars.
"""
import numpy as np
import pytest
import torch

from pc3d.ops.partition.flattened_windows import (ORDERS, flattened_window_groups, flattened_window_groups_reference,
                                                  flattened_window_mappings, flattened_window_order_reference)
from pc3d.ops.partition.rotated_sets import rotated_set_pair, rotated_sets, rotated_sets_reference
from pc3d.ops.partition.scattered_windows import scattered_windows
from pc3d.ops.partition.sst_regions import sst_region_groups
from pc3d.ops.partition.windows import window_partition

KITTI_RANGE = (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)
PILLAR = (0.32, 0.32, 4.0)


def random_coords(num, spatial_shape, batch_size=2, seed=0):
    """Unique random (batch, z, y, x) int32 coords."""
    nz, ny, nx = spatial_shape
    gen = torch.Generator().manual_seed(seed)
    lin = torch.randperm(batch_size * nz * ny * nx, generator=gen)[:num]
    b, rest = lin // (nz * ny * nx), lin % (nz * ny * nx)
    return torch.stack([b, rest // (ny * nx), (rest // nx) % ny, rest % nx], 1).int()


def kitti_pillar_coords(scan):
    from pc3d.ops.voxelize import dynamic_voxelize
    vox = dynamic_voxelize(torch.from_numpy(scan), PILLAR, KITTI_RANGE)
    shape = (1, 248, 216)
    return vox.coords, shape


# ---------------------------------------------------------------- DSVT rotated sets
@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("shift,set_size,window", [((0, 0, 0), 8, (12, 12, 1)), ((6, 6, 0), 5, (12, 12, 1)),
                                                   ((0, 0, 0), 1, (4, 4, 1)), ((2, 2, 1), 7, (4, 4, 2))])
def test_rotated_sets_match_bruteforce(axis, shift, set_size, window):
    shape = (1, 40, 50) if window[2] == 1 else (4, 20, 24)
    coords = random_coords(700, shape)
    sets = rotated_sets(coords, shape, window, set_size, axis, shift)
    assert sets.voxel_index.tolist() == rotated_sets_reference(coords, shape, window, set_size, axis, shift)


def check_set_properties(coords, sets, shape, window, shift, set_size):
    v = coords.shape[0]
    idx = sets.voxel_index
    assert idx.shape[1] == set_size
    assert set(idx.reshape(-1).tolist()) == set(range(v)), "every voxel in some set"
    # each voxel's unmasked slot appears exactly once, and slot_of_voxel finds it
    unmasked = idx[~sets.key_padding_mask]
    assert torch.equal(torch.sort(unmasked).values, torch.arange(v))
    assert torch.equal(idx.reshape(-1)[sets.slot_of_voxel], torch.arange(v))
    assert not sets.key_padding_mask.reshape(-1)[sets.slot_of_voxel].any()
    # a masked slot repeats its left neighbour; the first slot is never masked
    assert not sets.key_padding_mask[:, 0].any()
    rep = idx[:, 1:] == idx[:, :-1]
    assert torch.equal(sets.key_padding_mask[:, 1:], rep)
    # one window (hence one sample) per set
    win = window_partition(coords, shape, window, shift).window_id
    assert (win[idx] == sets.set_window[:, None]).all()
    assert (coords[idx, 0] == coords[idx[:, :1], 0]).all()


def test_rotated_sets_properties_on_kitti(kitti_scan):
    coords, shape = kitti_pillar_coords(kitti_scan)
    batch = torch.cat([coords, torch.cat([torch.ones_like(coords[:, :1]), coords[:, 1:]], 1)])  # 2 samples
    for shift, window in [((0, 0, 0), (12, 12, 1)), ((6, 6, 0), (24, 24, 1))]:  # DSVT hybrid config
        for axis in ("x", "y"):
            sets = rotated_sets(batch, shape, window, 36, axis, shift)
            check_set_properties(batch, sets, shape, window, shift, 36)
    # the rotation: x-major and y-major sets differ but cover the same windows
    sx = rotated_sets(coords, shape, (12, 12, 1), 36, "x")
    sy = rotated_sets(coords, shape, (12, 12, 1), 36, "y")
    assert torch.equal(sx.set_window, sy.set_window) and not torch.equal(sx.voxel_index, sy.voxel_index)
    # the (y, x) pair shares the layout but equals the individual partitions
    for one, paired in zip((rotated_sets(batch, shape, (24, 24, 1), 36, axis, (6, 6, 0)) for axis in ("y", "x")),
                           rotated_set_pair(batch, shape, (24, 24, 1), 36, (6, 6, 0))):
        for a, b in zip(one, paired):
            assert torch.equal(a, b)
    sub = coords[:3000]
    assert rotated_sets(sub, shape, (12, 12, 1), 36, "y", (6, 6, 0)).voxel_index.tolist() == \
        rotated_sets_reference(sub, shape, (12, 12, 1), 36, "y", (6, 6, 0))


def test_rotated_sets_set_rule_small_window():
    # one window of N=5 voxels, S=4: ceil(5/4)=2 sets, slots floor(t*5/8) -> ranks [0,0,1,1] and [2,3,3,4]
    coords = torch.tensor([[0, 0, 0, x] for x in range(5)], dtype=torch.int32)
    sets = rotated_sets(coords, (1, 8, 8), (8, 8, 1), 4, "x")
    assert sets.voxel_index.tolist() == [[0, 0, 1, 1], [2, 3, 3, 4]]
    assert sets.key_padding_mask.tolist() == [[False, True, False, True], [False, False, True, False]]


def test_rotated_sets_bad_input():
    coords = random_coords(10, (1, 8, 8))
    with pytest.raises(TypeError, match="coords"):
        rotated_sets(coords.float(), (1, 8, 8), (4, 4, 1), 4)
    with pytest.raises(ValueError, match="coords"):
        rotated_sets(coords[:, :3], (1, 8, 8), (4, 4, 1), 4)
    with pytest.raises(ValueError, match="set_size"):
        rotated_sets(coords, (1, 8, 8), (4, 4, 1), 0)
    with pytest.raises(ValueError, match="axis"):
        rotated_sets(coords, (1, 8, 8), (4, 4, 1), 4, axis="z")
    with pytest.raises(ValueError, match="sparse_shape"):
        rotated_sets(coords, (1, 4, 4), (4, 4, 1), 4)
    with pytest.raises(ValueError, match="window_shape"):
        rotated_sets(coords, (1, 8, 8), (0, 4, 1), 4)
    empty = rotated_sets(coords[:0], (1, 8, 8), (4, 4, 1), 4)
    assert empty.voxel_index.shape == (0, 4) and empty.slot_of_voxel.shape == (0,)


# ---------------------------------------------------------------- FlatFormer flattened windows
@pytest.mark.parametrize("name", ORDERS)
def test_flattened_order_matches_original_formulation(name):
    shape = (2, 37, 45)
    coords = random_coords(900, shape, batch_size=3)
    groups = flattened_window_groups(coords, shape, (9, 7), 16, name[0], name.endswith("shift"))
    ref = flattened_window_order_reference(coords, shape, (9, 7), name[0], name.endswith("shift"))
    assert torch.equal(groups.order, ref)
    assert torch.equal(groups.voxel_index,
                       flattened_window_groups_reference(coords, shape, (9, 7), 16, name[0], name.endswith("shift")))


def test_flattened_order_is_a_serpentine_curve():
    # dense grid, windows tiling it exactly: inside a row of windows consecutive voxels of the curve
    # are 4-neighbours (FlatFormer's curve restarts at the same column when it enters the next row)
    ny, nx = 8, 12
    yy, xx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
    coords = torch.stack([torch.zeros_like(xx), torch.zeros_like(xx), yy, xx], -1).reshape(-1, 4).int()
    for axis, row_col, transitions in (("x", 2, ny // 4 - 1), ("y", 3, nx // 4 - 1)):
        order = flattened_window_groups(coords, (1, ny, nx), (4, 4), 8, axis).order
        pts = coords[order]
        steps = (pts[1:, 2:] - pts[:-1, 2:]).abs().sum(1)
        same_row = pts[1:, row_col] // 4 == pts[:-1, row_col] // 4
        assert (steps[same_row] == 1).all(), axis
        assert int((~same_row).sum()) == transitions and (pts[1:, 5 - row_col] == pts[:-1, 5 - row_col])[~same_row].all()


def test_flattened_groups_properties_on_kitti(kitti_scan):
    coords, shape = kitti_pillar_coords(kitti_scan)
    small = torch.tensor([[2, 0, 5, 5], [2, 0, 5, 6], [2, 0, 9, 9]], dtype=torch.int32)  # sample shorter than a group
    batch = torch.cat([coords, torch.cat([torch.ones_like(coords[:, :1]), coords[:, 1:]], 1), small])
    v = batch.shape[0]
    g = 69
    maps = flattened_window_mappings(batch, shape, (12, 12), g)
    assert set(maps) == set(ORDERS)
    for name, m in maps.items():
        assert torch.equal(torch.sort(m.order).values, torch.arange(v)), name
        idx, mask = m.voxel_index, m.key_padding_mask
        assert idx.shape[1] == g and set(idx.reshape(-1).tolist()) == set(range(v))
        assert torch.equal(idx.reshape(-1)[m.slot_of_voxel], torch.arange(v)), "inverse map round-trips"
        assert not mask.reshape(-1)[m.slot_of_voxel].any()
        assert (batch[idx, 0] == batch[idx[:, :1], 0]).all(), "groups never mix samples"
        # non-padded slots are a contiguous run of the flattened order
        position = torch.empty_like(m.order)
        position[m.order] = torch.arange(v)
        pos = position[idx]
        first = pos[:, :1]
        k = torch.arange(g)[None, :]
        assert torch.equal(torch.where(mask, first + k, pos), first + k)
        # in a full-size sample a padded slot repeats a voxel of the previous group (FlatFormer's rule)
        big = mask.any(1) & ((~mask).sum(1) > 0) & (batch[idx[:, 0], 0] < 2)
        for row in torch.nonzero(big).reshape(-1).tolist():
            assert torch.equal(idx[row][mask[row]], idx[row - 1][mask[row]])
    last = maps["x"].voxel_index[-1].tolist()
    assert set(last) == {v - 3, v - 2, v - 1}, "short sample repeats its own voxels"


def test_flattened_groups_bad_input():
    coords = random_coords(10, (1, 8, 8))
    with pytest.raises(ValueError, match="group_size"):
        flattened_window_groups(coords, (1, 8, 8), (4, 4), 0)
    with pytest.raises(ValueError, match="axis"):
        flattened_window_groups(coords, (1, 8, 8), (4, 4), 4, axis="q")
    with pytest.raises(ValueError, match="coords"):
        flattened_window_groups(coords * -1 - 1, (1, 8, 8), (4, 4), 4)
    with pytest.raises(TypeError, match="coords"):
        flattened_window_groups(coords.numpy(), (1, 8, 8), (4, 4), 4)


# ---------------------------------------------------------------- ScatterFormer scattered windows
def test_scattered_windows_segments(kitti_scan):
    coords, shape = kitti_pillar_coords(kitti_scan)
    batch = torch.cat([coords, torch.cat([torch.ones_like(coords[:, :1]), coords[:, 1:]], 1)])
    v = batch.shape[0]
    sw = scattered_windows(batch, shape, (12, 12, 1), (6, 6, 0))
    assert int(sw.counts.sum()) == v and (sw.counts > 0).all()
    assert torch.equal(sw.order[sw.inverse], torch.arange(v))
    win = window_partition(batch, shape, (12, 12, 1), (6, 6, 0)).window_id
    seg_of_sorted = torch.repeat_interleave(torch.arange(sw.counts.shape[0]), sw.counts)
    assert torch.equal(sw.offsets, torch.cumsum(sw.counts, 0) - sw.counts)
    assert torch.equal(win[sw.order], sw.window_id[seg_of_sorted]), "one window per segment"
    assert torch.equal(sw.window_of_voxel, seg_of_sorted[sw.inverse])
    assert len(torch.unique(sw.window_id)) == sw.window_id.shape[0], "windows are not split"
    ref = {}
    for row, w in enumerate(win.tolist()):
        ref[w] = ref.get(w, 0) + 1
    assert sw.counts.tolist() == [ref[w] for w in sorted(ref)]


# ---------------------------------------------------------------- SST regions
def test_sst_regions_drop_policy():
    shape = (1, 30, 30)
    coords = random_coords(1500, shape, batch_size=2, seed=3)
    levels = ((8, 0, 8), (16, 8, 16), (20, 16, 10**9))
    reg = sst_region_groups(coords, shape, (10, 10, 1), (5, 5, 0), levels)
    win = window_partition(coords, shape, (10, 10, 1), (5, 5, 0)).window_id
    # reference: order of appearance per window
    members = {}
    for row, w in enumerate(win.tolist()):
        members.setdefault(w, []).append(row)
    keep_ref = torch.zeros(coords.shape[0], dtype=torch.bool)
    for w, rows in members.items():
        n = len(rows)
        budget = next(t for t, lo, hi in levels if lo <= n < hi)
        keep_ref[rows[:budget]] = True
    assert torch.equal(reg.keep_mask, keep_ref)
    assert (~reg.keep_mask).any(), "the test grid must exercise dropping"
    seen = []
    for (budget, lo, hi), level in zip(levels, reg.levels):
        assert level.voxel_index.shape[1] == budget
        for row in range(level.voxel_index.shape[0]):
            rows = members[int(level.window_id[row])]
            assert lo <= len(rows) < hi
            kept = level.voxel_index[row][~level.key_padding_mask[row]].tolist()
            assert kept == rows[:budget]
            seen += kept
    assert sorted(seen) == torch.nonzero(reg.keep_mask).reshape(-1).tolist()
    with pytest.raises(ValueError, match="drop_levels"):
        sst_region_groups(coords, shape, (10, 10, 1), drop_levels=((8, 5, 2),))


# ---------------------------------------------------------------- ONNX export
def _export_and_compare(module, example, other):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    program = torch.onnx.export(module, (example,), dynamo=True, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("num_voxels")},))
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    for coords in (example, other):
        got = session.run(None, {session.get_inputs()[0].name: coords.numpy()})
        want = module(coords)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w.numpy())


@pytest.mark.slow
def test_partitions_onnx_export_identical():
    shape = (1, 40, 50)

    class Sets(torch.nn.Module):
        def forward(self, coords):
            s = rotated_sets(coords, shape, (12, 12, 1), 8, "y", (6, 6, 0))
            return s.voxel_index, s.key_padding_mask, s.slot_of_voxel

    class Groups(torch.nn.Module):
        def forward(self, coords):
            g = flattened_window_groups(coords, shape, (12, 12), 16, "x", True)
            return g.voxel_index, g.key_padding_mask, g.slot_of_voxel

    class Scatter(torch.nn.Module):
        def forward(self, coords):
            s = scattered_windows(coords, shape, (12, 12, 1))
            return s.order, s.offsets, s.counts, s.window_of_voxel

    for module in (Sets(), Groups(), Scatter()):
        _export_and_compare(module, random_coords(500, shape, seed=1), random_coords(777, shape, seed=2))


def test_rotated_sets_onnx_export_identical():
    shape = (1, 40, 50)

    class Sets(torch.nn.Module):
        def forward(self, coords):
            s = rotated_sets(coords, shape, (12, 12, 1), 8, "x")
            return s.voxel_index, s.key_padding_mask, s.slot_of_voxel

    _export_and_compare(Sets(), random_coords(300, shape, seed=1), random_coords(450, shape, seed=2))
