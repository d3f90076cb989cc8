"""pc3d's spconv path on the CPU: one thread inside the sparse convs, biased SubM convs exact.

spconv 2.3.8's CPU kernels give wrong, non-deterministic results with more than one thread, so
`SparseResNetBackbone` must run them single-threaded whatever the caller set, and restore the caller's count.
"""
import itertools

import pytest
import torch

spconv = pytest.importorskip("spconv.pytorch")

from pc3d.models.backbones_3d.spconv_resnet import SparseResNetBackbone  # noqa: E402
from pc3d.models.spconv_cpu import SubMConv3d as BiasedSubMConv3d  # noqa: E402
from pc3d.structures import SparseVoxels  # noqa: E402
from spconv.pytorch.conv import SparseConvolution  # noqa: E402


def _voxels(channels=4, shape=(12, 24, 24), n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    zyx = torch.unique(torch.stack([torch.randint(0, s, (n,), generator=g) for s in shape], 1), dim=0)
    coords = torch.cat([torch.zeros(len(zyx), 1, dtype=torch.long), zyx], 1).int()
    return SparseVoxels(torch.randn(len(zyx), channels, generator=g), coords, shape, 1, (0.1, 0.1, 0.2),
                        (0, 0, 0, 2.4, 2.4, 2.4))


def test_sparse_convs_run_single_threaded_and_restore_threads():
    model = SparseResNetBackbone(4, channels=(4, 8, 8, 8), out_channels=8, block_bias=True, grid_pad=(1, 0, 0)).eval()
    seen = []
    for module in model.modules():
        if isinstance(module, SparseConvolution):
            module.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            model(_voxels(shape=(40, 24, 24)))
        assert torch.get_num_threads() == 2  # the caller's setting is back
    finally:
        torch.set_num_threads(1)
    assert seen and set(seen) == {1}, f"sparse convs ran with thread counts {sorted(set(seen))}"


def test_biased_subm_conv_matches_brute_force_on_cpu():
    voxels = _voxels(channels=3, shape=(5, 6, 7), n=80, seed=1)
    conv = BiasedSubMConv3d(3, 4, 3, padding=1, bias=True, indice_key="k")
    with torch.no_grad():
        conv.bias.copy_(torch.randn(4))
        out = conv(spconv.SparseConvTensor(voxels.features, voxels.coords, list(voxels.spatial_shape), 1))
    zyx = voxels.coords[:, 1:].tolist()
    index = {tuple(c): i for i, c in enumerate(zyx)}
    weight = conv.weight.detach().double()  # (out, kz, ky, kx, in)
    got = {tuple(c[1:].tolist()): f for c, f in zip(out.indices, out.features)}
    for i, (z, y, x) in enumerate(zyx):
        expected = conv.bias.detach().double().clone()
        for dz, dy, dx in itertools.product(range(3), repeat=3):
            j = index.get((z + dz - 1, y + dy - 1, x + dx - 1))
            if j is not None:
                expected += weight[:, dz, dy, dx, :] @ voxels.features[j].double()
        assert torch.allclose(got[(z, y, x)].double(), expected, atol=1e-5)


def test_default_backbone_unchanged_by_parity_options():
    """Defaults (no block bias, no grid padding) keep pc3d's own keys and output grid."""
    model = SparseResNetBackbone(4, channels=(4, 8, 8, 8), out_channels=8)
    assert not any(k.endswith("conv1.bias") for k in model.state_dict())
    assert model.grid_pad == (0, 0, 0)
    padded = SparseResNetBackbone(4, channels=(4, 8, 8, 8), out_channels=8, grid_pad=(1, 0, 0)).eval()
    with torch.no_grad():
        assert padded(_voxels(shape=(40, 24, 24))).spatial_shape[0] == 2  # OpenPCDet: 40 + 1 -> 21 -> 11 -> 5 -> 2
        assert model.eval()(_voxels(shape=(40, 24, 24))).spatial_shape[0] == 1
