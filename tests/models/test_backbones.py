"""Attention blocks and 3D backbones (DSVT-P/V, FlatFormer, ScatterFormer, SST, spconv ResNet).

Backbones run forward + backward on the real KITTI scan voxelized with `dynamic_voxelize`
(cropped, tiny widths) so the file stays fast.
"""
import math

import pytest
import torch
import yaml

from pc3d.models.attention import (GroupAttention, PaddedGroupLayer, scattered_linear_attention,
                                   sinusoidal_position_embedding)
from pc3d.testing.attention_reference import naive_masked_attention
from pc3d.models.backbones_3d import BACKBONES_3D, build_backbone_3d
from pc3d.models.backbones_3d.dsvt import AttentionPooling3d
from pc3d.ops.partition.rotated_sets import rotated_sets
from pc3d.structures import SparseVoxels

CROP_RANGE = (0.0, -10.24, -3.0, 20.48, 10.24, 1.0)  # 20 m x 20 m in front of the car keeps the tests fast


def voxelize(scan, voxel_size, point_range=CROP_RANGE, batch=1):
    """Mean-pooled (x, y, z, intensity) features of the scan's non-empty voxels, repeated `batch` times."""
    from pc3d.ops.voxelize import dynamic_voxelize, voxel_reduce
    pts = torch.from_numpy(scan)
    vox = dynamic_voxelize(pts, voxel_size, point_range)
    feats = voxel_reduce(pts, vox.point_voxel, vox.coords.shape[0])
    shape = tuple(round((point_range[3 + i] - point_range[i]) / voxel_size[i]) for i in (2, 1, 0))
    coords = torch.cat([torch.cat([torch.full_like(vox.coords[:, :1], b), vox.coords[:, 1:]], 1) for b in range(batch)])
    feats = torch.cat([feats] * batch)
    return SparseVoxels(feats, coords, shape, batch, tuple(voxel_size), point_range)


@pytest.fixture(scope="module")
def pillars(kitti_scan):
    return voxelize(kitti_scan, (0.32, 0.32, 4.0), CROP_RANGE, batch=2)


@pytest.fixture(scope="module")
def voxels3d(kitti_scan):
    return voxelize(kitti_scan, (0.32, 0.32, 0.1), CROP_RANGE)


# ---------------------------------------------------------------- attention
def test_group_attention_equals_naive_masked_attention():
    torch.manual_seed(0)
    g, l, c, h = 5, 7, 16, 4
    attn = GroupAttention(c, h).eval()
    x, pos = torch.randn(g, l, c), torch.randn(g, l, c)
    mask = torch.rand(g, l) < 0.4
    mask[:, 0] = False
    got = attn(x, pos, mask)

    def heads(t):
        return t.reshape(g, l, h, c // h).transpose(1, 2)
    q, k, v = heads(attn.q_proj(x + pos)), heads(attn.k_proj(x + pos)), heads(attn.v_proj(x))
    ref = attn.out_proj(naive_masked_attention(q, k, v, mask).transpose(1, 2).reshape(g, l, c))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # and explicitly: a masked key has no influence on any output
    x2 = x.clone()
    x2[mask] = 1e3
    pos2 = pos.clone()
    pos2[mask] = -5.0
    torch.testing.assert_close(attn(x2, pos2, mask)[~mask], got[~mask], atol=1e-5, rtol=1e-5)


def test_set_layer_with_repeated_slots_equals_attention_on_unique_voxels():
    # a DSVT set holding repeats (masked) gives the same voxel outputs as attending over the unique voxels
    torch.manual_seed(1)
    coords = torch.tensor([[0, 0, 0, x] for x in range(5)], dtype=torch.int32)
    sets = rotated_sets(coords, (1, 8, 8), (8, 8, 1), 4, "x")  # [[0,0,1,1],[2,3,3,4]]
    layer = PaddedGroupLayer(8, 2, 16).eval()
    x, pos = torch.randn(5, 8), torch.randn(5, 8)
    got = layer(x, pos, sets.voxel_index, sets.key_padding_mask, sets.slot_of_voxel)
    unique_sets = [[0, 1], [2, 3, 4]]
    for members in unique_sets:
        idx = torch.tensor(members)[None]
        ref = layer(x, pos, idx, torch.zeros_like(idx, dtype=torch.bool),
                    torch.zeros(5, dtype=torch.long).index_copy(0, idx[0], torch.arange(len(members))))
        torch.testing.assert_close(got[idx[0]], ref[idx[0]], atol=1e-5, rtol=1e-5)


def test_scattered_linear_attention_matches_per_window_loop():
    torch.manual_seed(2)
    v, h, d, e, w = 40, 2, 4, 3, 6
    q, k, val = torch.relu(torch.randn(v, h, d)), torch.relu(torch.randn(v, h, d)), torch.randn(v, h, e)
    window = torch.randint(0, w, (v,))
    window[:w] = torch.arange(w)
    got = scattered_linear_attention(q, k, val, window, w, eps=1e-6)
    ref = torch.empty(v, h, e)
    for win in range(w):
        rows = torch.nonzero(window == win).reshape(-1)
        for head in range(h):
            kv = k[rows, head].T @ val[rows, head]            # (d, e)
            z = k[rows, head].sum(0)                           # (d,)
            ref[rows, head] = (q[rows, head] @ kv) / (q[rows, head] @ z + 1e-6)[:, None]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_sparse_depthwise_conv_equals_dense_conv_at_active_sites():
    # CWI's pure-torch depthwise sparse conv == a dense depthwise conv2d on the zero-filled BEV grid,
    # read at the active pillars (submanifold semantics); samples do not leak into each other
    import torch.nn.functional as F
    from pc3d.models.backbones_3d.scatterformer import SparseDepthwiseConv2d, cwi_offsets, neighbor_index
    torch.manual_seed(5)
    ny, nx, c = 9, 11, 3
    lin = torch.randperm(2 * ny * nx)[:80]
    coords = torch.stack([lin // (ny * nx), torch.zeros_like(lin), (lin // nx) % ny, lin % nx], 1).int()
    x = torch.randn(80, c)
    for name, offsets in cwi_offsets(5).items():
        conv = SparseDepthwiseConv2d(c, len(offsets))
        got = conv(x, neighbor_index(coords, (1, ny, nx), offsets))
        dy = [o[0] for o in offsets]
        dx = [o[1] for o in offsets]
        kh, kw = max(dy) - min(dy) + 1, max(dx) - min(dx) + 1
        kernel = torch.zeros(c, 1, kh, kw)
        for k, (oy, ox) in enumerate(offsets):
            kernel[:, 0, oy - min(dy), ox - min(dx)] = conv.weight[k]
        for b in range(2):
            rows = coords[:, 0] == b
            grid = torch.zeros(1, c, ny, nx)
            grid[0, :, coords[rows, 2].long(), coords[rows, 3].long()] = x[rows].T
            dense = F.conv2d(grid, kernel, conv.bias, padding=(kh // 2, kw // 2), groups=c)
            want = dense[0, :, coords[rows, 2].long(), coords[rows, 3].long()].T
            torch.testing.assert_close(got[rows], want, atol=1e-5, rtol=1e-5)


def test_sinusoidal_position_embedding_values():
    loc = torch.tensor([[0.0, 0.0], [3.0, -2.0]])
    emb = sinusoidal_position_embedding(loc, 18)
    assert emb.shape == (2, 18)
    # 18 // 4 * 2 = 8 channels per axis; channel 0 = sin(x / 1), channel 1 = cos(x / 1)
    torch.testing.assert_close(emb[1, :2], torch.tensor([math.sin(3.0), math.cos(3.0)]))
    torch.testing.assert_close(emb[1, 8:10], torch.tensor([math.sin(-2.0), math.cos(-2.0)]))
    assert torch.equal(emb[:, 16:], torch.zeros(2, 2))


def test_attention_pooling_masks_empty_children():
    torch.manual_seed(3)
    pool = AttentionPooling3d(8, 4, 2).eval()
    children = torch.randn(3, 4, 8)
    empty = torch.tensor([[False, True, True, True], [False, False, True, False], [False] * 4])
    out = pool(children, empty)
    garbage = children.clone()
    garbage[empty] = 100.0
    torch.testing.assert_close(pool(garbage, empty), out)


# ---------------------------------------------------------------- spconv CPU patch
def test_spconv_cpu_patch_forward_backward():
    import pc3d.models.spconv_cpu as patch
    import spconv.pytorch as spconv
    assert patch.apply_spconv_cpu_patch() == (not torch.cuda.is_available())  # idempotent re-apply
    torch.manual_seed(4)
    coords = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 2], [0, 1, 1, 1], [0, 2, 2, 2], [1, 1, 3, 3]], dtype=torch.int32)
    feats = torch.randn(5, 4, requires_grad=True)
    x = spconv.SparseConvTensor(feats, coords, [4, 4, 4], 2)
    subm = spconv.SubMConv3d(4, 6, 3, padding=1, indice_key="s")
    down = spconv.SparseConv3d(6, 3, 3, stride=2, padding=1)
    out = down(subm(x))
    out.features.sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    assert subm.weight.grad.abs().sum() > 0 and down.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- backbones
TINY = {
    "DSVT-P": dict(type="DSVT", in_channels=4, dims=16, depths=2, num_heads=2, dim_feedforward=32, set_size=36,
                   window_shape=[12, 12, 1], hybrid_factor=[2, 2, 1], shifts=[[[0, 0, 0], [6, 6, 0]]]),
    "FlatFormer": dict(type="FlatFormer", in_channels=4, dim=16, num_blocks=1, num_heads=2, group_size=69,
                       window_shape=[9, 9]),
    "ScatterFormer": dict(type="ScatterFormer", in_channels=4, dim=16, num_layers=2, num_heads=2, kernel_size=5),
    "SST": dict(type="SST", in_channels=4, dim=16, num_layers=2, num_heads=2, dim_feedforward=32),
}


def _loss_and_check_grads(model, voxels, out):
    weight = torch.randn(out.features.shape, generator=torch.Generator().manual_seed(0))
    (out.features * weight).sum().backward()
    grad = voxels.features.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    params = [p for p in model.parameters() if p.requires_grad]
    with_grad = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) >= 0.9 * len(params), f"{len(with_grad)}/{len(params)} parameters got gradients"


@pytest.mark.parametrize("name", list(TINY))
def test_pillar_backbone_forward_backward_on_kitti(name, pillars):
    torch.manual_seed(0)
    model = build_backbone_3d(yaml.safe_load(yaml.safe_dump(TINY[name])))  # YAML round trip
    voxels = pillars.with_features(pillars.features.clone().requires_grad_())
    out = model(voxels)
    assert isinstance(out, SparseVoxels)
    assert out.features.shape == (len(voxels), model.out_channels)
    assert torch.equal(out.coords, voxels.coords) and out.spatial_shape == voxels.spatial_shape
    assert torch.isfinite(out.features).all()
    _loss_and_check_grads(model, voxels, out)
    # batch samples never mix: sample 1 is a copy of sample 0 and must give the same features
    model.eval()
    with torch.no_grad():
        feats = model(pillars).features
    half = len(pillars) // 2
    torch.testing.assert_close(feats[:half], feats[half:], atol=1e-4, rtol=1e-4)


def test_dsvt_voxel_pooling_stages(voxels3d):
    torch.manual_seed(0)
    cfg = dict(type="DSVT-V", in_channels=4, window_shape=[[12, 12, 40], [12, 12, 10]], downsample_stride=[[1, 1, 4]],
               dims=[16, 24], depths=1, num_heads=2, dim_feedforward=32, set_size=48, pool_heads=2,
               shifts=[[[0, 0, 0], [6, 6, 0]], [[0, 0, 0], [6, 6, 0]]])
    model = build_backbone_3d(cfg)
    voxels = voxels3d.with_features(voxels3d.features.clone().requires_grad_())
    out = model(voxels)
    c = voxels.coords.long()
    parents = torch.unique(torch.stack([c[:, 0], c[:, 1] // 4, c[:, 2], c[:, 3]], 1), dim=0)
    assert torch.equal(torch.unique(out.coords.long(), dim=0), parents)
    assert out.features.shape == (parents.shape[0], 24) and model.out_channels == 24
    assert out.spatial_shape == (10, voxels.spatial_shape[1], voxels.spatial_shape[2])
    assert out.voxel_size == pytest.approx((0.32, 0.32, 0.4))
    _loss_and_check_grads(model, voxels, out)


def _simulate_sparse_conv(active, shape, kernel, stride, padding):
    out_shape = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(shape, kernel, stride, padding))
    out = set()
    for b, *i in active:
        axes = []
        for ii, k, s, p, n in zip(i, kernel, stride, padding, out_shape):
            axes.append([(ii + p - kk) // s for kk in range(k) if (ii + p - kk) % s == 0 and 0 <= (ii + p - kk) // s < n])
        out |= {(b, z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]}
    return out, out_shape


def test_spconv_resnet_backbone(voxels3d):
    torch.manual_seed(0)
    model = build_backbone_3d(dict(type="VoxelResBackBone8x", in_channels=4, channels=[8, 8, 16, 16], out_channels=16,
                                   blocks_per_stage=1))
    voxels = voxels3d.with_features(voxels3d.features.clone().requires_grad_())
    out = model(voxels)
    nz, ny, nx = voxels.spatial_shape
    assert out.spatial_shape[1:] == (math.ceil(ny / 8), math.ceil(nx / 8)) and out.spatial_shape[0] >= 1
    assert out.features.shape[1] == 16 and out.coords.shape == (out.features.shape[0], 4)
    # output sites equal a plain-Python simulation of the strided conv chain (spconv's index rule:
    # output o receives input o * stride - padding + k)
    active, shape = {tuple(c) for c in voxels.coords.tolist()}, voxels.spatial_shape
    for kernel, stride, padding in [((3, 3, 3), (2, 2, 2), (1, 1, 1))] * 2 + [((3, 3, 3), (2, 2, 2), (0, 1, 1)),
                                                                            ((3, 1, 1), (2, 1, 1), (0, 0, 0))]:
        active, shape = _simulate_sparse_conv(active, shape, kernel, stride, padding)
    assert {tuple(c) for c in out.coords.tolist()} == active and out.spatial_shape == shape
    assert out.voxel_size == pytest.approx((2.56, 2.56, 1.6))
    _loss_and_check_grads(model, voxels, out)


def test_dsvt_position_embedding_uses_the_block_shift(pillars):
    # both layers of a block embed the in-window coords of the block's own window configuration
    # (the reference implementation gives the second layer the other shift's coords)
    from pc3d.ops.partition.windows import window_partition
    model = build_backbone_3d(TINY["DSVT-P"]).eval()
    seen = {}
    for b, embeds in enumerate(model.pos_embeds[0]):
        for layer, embed in enumerate(embeds):
            embed.register_forward_hook(lambda mod, inp, out, key=(b, layer): seen.__setitem__(key, inp[0].clone()))
    with torch.no_grad():
        model(pillars)
    for b, (window, shift) in enumerate([((12, 12, 1), (0, 0, 0)), ((24, 24, 1), (6, 6, 0))]):
        inner = window_partition(pillars.coords, pillars.spatial_shape, window, shift).coords_in_window
        want = torch.stack([inner[:, 2] - window[0] / 2, inner[:, 1] - window[1] / 2], 1).float()
        for layer in range(2):
            torch.testing.assert_close(seen[(b, layer)], want)


def test_build_backbone_3d_errors(pillars):
    with pytest.raises(ValueError, match="unknown type"):
        build_backbone_3d({"type": "NoSuchNet"})
    with pytest.raises(ValueError, match="type"):
        build_backbone_3d({"in_channels": 4})
    with pytest.raises(TypeError, match="FlatFormer"):
        build_backbone_3d({"type": "FlatFormer", "in_channels": 4, "bogus": 1})
    assert {"DSVT", "FlatFormer", "ScatterFormer", "SST", "SparseResNetBackbone"} <= set(BACKBONES_3D)
    model = build_backbone_3d(TINY["FlatFormer"])
    with pytest.raises(ValueError, match=r"\(V, 4\)"):
        model(pillars.with_features(torch.zeros(len(pillars), 5)))
    bad = pillars.features.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(pillars.with_features(bad))
    with pytest.raises(TypeError, match="SparseVoxels"):
        model(pillars.features)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["DSVT-P", "FlatFormer"])
def test_backbone_onnx_export_matches_eager(name):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    shape = (1, 60, 60)

    def coords_of(num, seed):
        lin = torch.randperm(shape[1] * shape[2], generator=torch.Generator().manual_seed(seed))[:num]
        return torch.stack([torch.zeros_like(lin), torch.zeros_like(lin), lin // shape[2], lin % shape[2]], 1).int()

    cfg = dict(TINY[name], set_size=16) if name == "DSVT-P" else dict(TINY[name], group_size=16)
    model = build_backbone_3d(cfg).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, feats, coords):
            return self.inner(SparseVoxels(feats, coords, shape, 1)).features

    wrapper = Wrapper(model)
    example = (torch.randn(400, 4), coords_of(400, 0))
    num = torch.export.Dim("num_voxels")
    program = torch.onnx.export(wrapper, example, dynamo=True, dynamic_shapes=({0: num}, {0: num}))
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    names = [i.name for i in session.get_inputs()]
    for feats, coords in (example, (torch.randn(650, 4), coords_of(650, 1))):
        got = session.run(None, {names[0]: feats.numpy(), names[1]: coords.numpy()})[0]
        with torch.no_grad():
            want = wrapper(feats, coords).numpy()
        assert abs(got - want).max() < 1e-4


@pytest.mark.parametrize("config", ["configs/synthetic/centerpoint_voxel_tiny.yaml", "configs/waymo/centerpoint_voxel.yaml",
                                    "configs/nuscenes/centerpoint_voxel.yaml"])
def test_spconv_backbone_output_grid_equals_running_it(config):
    """The detector sizes its BEV map from `output_grid` (no spconv call at build time); spconv agrees."""
    from pathlib import Path

    from pc3d.config import load_config
    from pc3d.models.detector import Detector
    from pc3d.structures import SparseVoxels

    pytest.importorskip("spconv.pytorch")
    model = Detector.from_config(load_config(Path(__file__).resolve().parents[2] / config))
    nz, ny, nx = model.voxelizer.spatial_shape
    coords = torch.tensor([[0, 0, 0, 0], [0, nz - 1, ny - 1, nx - 1], [0, nz // 2, ny // 2, nx // 2]], dtype=torch.int32)
    voxels = SparseVoxels(torch.randn(3, model.backbone_3d.in_channels), coords, (nz, ny, nx), 1,
                          model.voxelizer.voxel_size, model.voxelizer.point_range)
    with torch.no_grad():
        out = model.backbone_3d.eval()(voxels)
    assert tuple(out.spatial_shape) == model.backbone_3d.output_grid((nz, ny, nx))
