"""Options added for reference parity: defaults keep pc3d's behaviour, the options compute what they say."""
import torch

from pc3d.models.backbones_2d import build_backbone_2d
from pc3d.models.heads.centerpoint import build_head
from pc3d.models.heads.targets import BoxCoder, MapGeometry
from pc3d.models.to_bev import scatter_to_dense
from pc3d.structures import SparseVoxels

CFG = {"type": "second", "layer_nums": [1, 1], "layer_strides": [1, 2], "num_filters": [8, 16],
       "upsample_strides": [1, 2], "num_upsample_filters": [8, 8]}


def test_channels_last_backbone_2d_same_numbers():
    torch.manual_seed(0)
    plain = build_backbone_2d(CFG, 6).eval()
    nhwc = build_backbone_2d({**CFG, "channels_last": True}, 6).eval()
    nhwc.load_state_dict(plain.state_dict())
    x = torch.randn(1, 6, 20, 24)
    with torch.no_grad():
        a, b = plain(x), nhwc(x)
    assert not plain.channels_last and a.is_contiguous()
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(a, b, atol=1e-5)


def test_head_norm_options():
    classes = ["a", "b"]
    default = build_head({"class_groups": [classes]}, 8, classes, (0.1, 0.1, 0.2), (0, 0, 0, 3.2, 3.2, 1), 1)
    assert default.shared[0].bias is None and default.shared[1].eps == 1e-3 and default.shared[1].momentum == 0.01
    ref = build_head({"class_groups": [classes], "norm": {"eps": 1e-5, "momentum": 0.1, "conv_bias": True}},
                     8, classes, (0.1, 0.1, 0.2), (0, 0, 0, 3.2, 3.2, 1), 1)
    assert ref.shared[0].bias is not None and ref.shared[1].eps == 1e-5 and ref.shared[1].momentum == 0.1
    hidden = ref.groups[0].heatmap[0]
    assert hidden.bias is not None and ref.groups[0].heatmap[1].eps == 1e-5


def test_size_clamp():
    geometry = MapGeometry((0.1, 0.1, 0.2), (0, 0, 0, 3.2, 3.2, 1), 1, (32, 32))
    codes = torch.zeros(1, 8)
    codes[0, 3:6] = 7.0
    zero = torch.zeros(1, dtype=torch.long)
    coder = BoxCoder(False)
    assert torch.allclose(coder.decode(codes, zero, zero, geometry)[0, 3], torch.exp(torch.tensor(6.0)))
    assert torch.allclose(coder.decode(codes, zero, zero, geometry, size_clamp=None)[0, 3], torch.exp(torch.tensor(7.0)))


def test_scatter_to_dense_single_sample_matches_batched_layout():
    g = torch.Generator().manual_seed(0)
    zyx = torch.unique(torch.stack([torch.randint(0, s, (40,), generator=g) for s in (3, 5, 6)], 1), dim=0)
    feats = torch.randn(len(zyx), 4, generator=g)
    one = SparseVoxels(feats, torch.cat([torch.zeros(len(zyx), 1, dtype=torch.long), zyx], 1).int(), (3, 5, 6), 1)
    dense = scatter_to_dense(one)
    assert dense.shape == (1, 4, 3, 5, 6)
    brute = torch.zeros(1, 4, 3, 5, 6)
    for (z, y, x), f in zip(zyx.tolist(), feats):
        brute[0, :, z, y, x] = f
    assert torch.equal(dense, brute)
    two = SparseVoxels(torch.cat([feats, feats]), torch.cat([one.coords, one.coords + torch.tensor([1, 0, 0, 0],
                                                                                                   dtype=torch.int32)]),
                       (3, 5, 6), 2)
    assert torch.equal(scatter_to_dense(two)[1], brute[0])
