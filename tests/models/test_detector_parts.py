"""Detector stages checked against brute force: voxelizer, VFEs, BEV scatter / height compression, 2D backbone."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from pc3d.models.backbones_2d import SECONDBackbone, build_backbone_2d
from pc3d.models.to_bev import HeightCompression, PillarScatter, build_to_bev
from pc3d.models.vfe import DynamicPointNetVFE, MeanVFE, Voxelizer, build_vfe
from pc3d.structures import SparseVoxels

VOXEL = (0.5, 0.5, 1.0)
RANGE = (-4.0, -4.0, -2.0, 4.0, 4.0, 2.0)




def _points(n=400, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-5, 5, (n, 3)) * [1, 1, 0.5]
    pts = np.column_stack([rng.integers(0, 2, n), xyz, rng.uniform(0, 1, n)]).astype(np.float32)
    pts[5, 1] = np.nan  # a non-finite point is dropped, not a crash
    return torch.from_numpy(pts)


def test_dynamic_voxelizer_maps_every_in_range_point_to_its_cell():
    pts = _points()
    vox = Voxelizer(VOXEL, RANGE, mode="dynamic")
    out = vox(pts, batch_size=2)
    assert vox.spatial_shape == (4, 16, 16)
    xyz = pts[:, 1:4].numpy()
    inside = np.all((xyz >= RANGE[:3]) & (xyz < RANGE[3:]), axis=1)
    assert out.points.shape[0] == inside.sum()
    cell = np.floor((out.points[:, :3].numpy() - RANGE[:3]) / VOXEL).astype(int)
    coords = out.coords[out.point_voxel].numpy()
    kept = pts[torch.from_numpy(inside)]
    assert np.array_equal(coords[:, 0], kept[:, 0].numpy().astype(int))
    assert np.array_equal(coords[:, 1:], cell[:, ::-1])
    # a NaN intensity drops its point too (the features would be NaN), a bad sample index is an error
    bad = pts.clone()
    bad[0, 4] = float("nan")
    assert vox(bad, 2).points.shape[0] == out.points.shape[0] - int(inside[0])
    with pytest.raises(ValueError, match="sample index"):
        vox(pts, batch_size=1)


def test_hard_voxelizer_and_mean_vfe_match_dynamic_mean_when_nothing_is_capped():
    pts = _points()
    dyn = Voxelizer(VOXEL, RANGE, mode="dynamic")(pts, 2)
    hard = Voxelizer(VOXEL, RANGE, mode="hard", max_points_per_voxel=64, max_voxels=10000)(pts, 2)
    mean_dyn = MeanVFE(4)(dyn)
    mean_hard = MeanVFE(4)(hard)
    order_dyn = {tuple(c): i for i, c in enumerate(dyn.coords.tolist())}
    assert len(order_dyn) == hard.coords.shape[0]
    for j, c in enumerate(hard.coords.tolist()):
        assert torch.allclose(mean_hard[j], mean_dyn[order_dyn[tuple(c)]], atol=1e-5)


def test_pointnet_vfe_inputs_and_voxel_max_against_brute_force():
    pts = _points()
    voxelized = Voxelizer(VOXEL, RANGE, mode="dynamic")(pts, 2)
    vfe = DynamicPointNetVFE(4, [8, 6], VOXEL, RANGE, with_distance=True).eval()
    inputs = vfe.point_inputs(voxelized)
    assert inputs.shape[1] == 4 + 3 + 3 + 1
    p = voxelized.points.numpy()
    for v in (0, 7, voxelized.num_voxels - 1):
        rows = np.nonzero(voxelized.point_voxel.numpy() == v)[0]
        mean = p[rows, :3].mean(axis=0)
        b, z, y, x = voxelized.coords[v].tolist()
        centre = np.array(RANGE[:3]) + (np.array([x, y, z]) + 0.5) * VOXEL
        assert np.allclose(inputs[rows, 4:7].numpy(), p[rows, :3] - mean, atol=1e-5)
        assert np.allclose(inputs[rows, 7:10].numpy(), p[rows, :3] - centre, atol=1e-5)
        assert np.allclose(inputs[rows, 10].numpy(), np.linalg.norm(p[rows, :3], axis=1), atol=1e-5)
    out = vfe(voxelized)
    assert out.shape == (voxelized.num_voxels, 6)
    # brute force of the two PointNet layers with a python loop over voxels
    with torch.no_grad():
        l0, l1 = vfe.layers
        h = torch.relu(l0.norm(l0.linear(inputs)))
        ref = []
        for v in range(voxelized.num_voxels):
            rows = voxelized.point_voxel == v
            ctx = h[rows].max(dim=0).values.expand(int(rows.sum()), -1)
            h1 = torch.relu(l1.norm(l1.linear(torch.cat([h[rows], ctx], dim=1))))
            ref.append(h1.max(dim=0).values)
    assert torch.allclose(out, torch.stack(ref), atol=1e-5)
    out.sum().backward()  # the scatter-max path is differentiable down to the first layer
    assert vfe.layers[0].linear.weight.grad is not None and vfe.layers[0].linear.weight.grad.abs().sum() > 0


def test_vfe_config_errors():
    with pytest.raises(ValueError, match="dynamic"):
        build_vfe({"type": "dynamic_pillar"}, 4, VOXEL, RANGE, mode="hard")
    with pytest.raises(ValueError, match="unknown vfe type"):
        build_vfe({"type": "pillar"}, 4, VOXEL, RANGE, mode="dynamic")
    with pytest.raises(ValueError):
        Voxelizer(VOXEL, RANGE, mode="sparse")


def _sparse(nz, seed=0, channels=3, batch=2):
    rng = np.random.default_rng(seed)
    cells = rng.choice(batch * nz * 5 * 6, 25, replace=False)
    b, rest = np.divmod(cells, nz * 5 * 6)
    z, rest = np.divmod(rest, 5 * 6)
    y, x = np.divmod(rest, 6)
    coords = torch.from_numpy(np.column_stack([b, z, y, x]).astype(np.int32))
    return SparseVoxels(torch.randn(25, channels), coords, (nz, 5, 6), batch)


def test_pillar_scatter_and_height_compression_against_loops():
    pillars = _sparse(1)
    bev = PillarScatter(3, (1, 5, 6))(pillars)
    ref = torch.zeros(2, 3, 5, 6)
    for f, (b, z, y, x) in zip(pillars.features, pillars.coords.tolist()):
        ref[b, :, y, x] = f
    assert torch.equal(bev, ref)
    voxels = _sparse(3, seed=1)
    bev = HeightCompression(3, (3, 5, 6))(voxels)
    assert bev.shape == (2, 9, 5, 6)
    ref = torch.zeros(2, 3, 3, 5, 6)
    for f, (b, z, y, x) in zip(voxels.features, voxels.coords.tolist()):
        ref[b, :, z, y, x] = f
    assert torch.equal(bev, ref.reshape(2, 9, 5, 6))  # channel-major, like OpenPCDet
    with pytest.raises(ValueError, match="height_compression"):
        build_to_bev({"type": "scatter"}, 3, (3, 5, 6))


@pytest.mark.parametrize("residual", [False, True])
def test_second_backbone_shapes_and_strides(residual):
    net = SECONDBackbone(8, [1, 1, 1], [1, 2, 2], [8, 16, 32], [1, 2, 4], [4, 4, 4], residual=residual)
    out = net(torch.randn(2, 8, 32, 40))
    assert out.shape == (2, 12, 32, 40) and net.stride == 1 and net.out_channels == 12
    half = build_backbone_2d({"type": "resnet", "layer_nums": [1, 2, 2], "layer_strides": [1, 2, 2],
                              "num_filters": [8, 8, 16], "upsample_strides": [0.5, 1, 2],
                              "num_upsample_filters": [4, 4, 4]}, 8)
    assert half(torch.randn(1, 8, 32, 40)).shape == (1, 12, 16, 20) and half.stride == 2
    up = build_backbone_2d({"type": "second", "layer_nums": [1, 1], "layer_strides": [1, 2], "num_filters": [8, 8],
                            "upsample_strides": [2, 4], "num_upsample_filters": [4, 4]}, 8)
    assert up(torch.randn(1, 8, 16, 16)).shape == (1, 8, 32, 32) and up.stride == Fraction(1, 2)
    with pytest.raises(ValueError, match="different strides"):
        SECONDBackbone(8, [1, 1], [1, 2], [8, 8], [1, 1], [4, 4])
