"""Sparse-convolution residual backbone (CenterPoint's VoxelNet `SpMiddleResNetFHD` /
OpenPCDet's `VoxelResBackBone8x`) on spconv, usable on a CPU-only torch via `pc3d.models.spconv_cpu`, or on
spconv-triton on GPUs without a spconv wheel (`pc3d.models.sparse_conv`).

Layout (channels `(c1, c2, c3, c4)`, default (16, 32, 64, 128)):
    SubM 3x3x3 -> c1 ; 2 residual blocks (c1)
    SparseConv stride 2 -> c2 ; 2 blocks ; SparseConv stride 2 -> c3 ; 2 blocks
    SparseConv stride 2 (z padding `last_z_padding`) -> c4 ; 2 blocks
    SparseConv (3, 1, 1) stride (2, 1, 1) -> out_channels  (`z_down=True`, CenterPoint's extra z reduction)
The output is 8x downsampled in x / y; the new `spatial_shape` and `voxel_size` are set on the output.
For pillar-like inputs (nz < 8) use `last_z_padding=1, z_down=False`.

OpenPCDet parity options (defaults keep pc3d's own behaviour; `pc3d.compat.openpcdet` sets them):
`block_bias` — the residual blocks' SubM convs carry a bias (OpenPCDet's `VoxelResBackBone8x` builds them with
`bias=True` unless `USE_BIAS` says otherwise); `grid_pad` — cells added to the sparse grid `(nz, ny, nx)`
before the first conv (OpenPCDet uses `grid_size[::-1] + [1, 0, 0]`, one extra z layer, which changes the
output z depth after the strided convs).
spconv's CPU kernels give wrong, non-deterministic results with more than one thread (seen with spconv 2.3.8
against a brute-force convolution), so on the CPU the sparse convs run with one thread (`spconv_cpu.one_thread`).
"""
from __future__ import annotations

from torch import nn

from pc3d.models.sparse_conv import spconv  # spconv.pytorch, or spconv_triton.pytorch (PC3D_SPCONV)

from pc3d.structures import SparseVoxels

from pc3d.models.spconv_cpu import SubMConv3d as BiasedSubMConv3d
from pc3d.models.spconv_cpu import one_thread

from ._common import as_int_tuple, check_voxels


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


class SparseBasicBlock(spconv.SparseModule):
    """Two SubM 3x3x3 convs with BN, ReLU and an identity shortcut."""

    def __init__(self, channels: int, indice_key: str, bias: bool = False):
        super().__init__()
        # biased SubM convs add their bias after the conv on the CPU (spconv cannot fuse it there)
        conv = BiasedSubMConv3d if bias else spconv.SubMConv3d
        self.conv1 = conv(channels, channels, 3, padding=1, bias=bias, indice_key=indice_key)
        self.bn1 = _bn(channels)
        self.conv2 = conv(channels, channels, 3, padding=1, bias=bias, indice_key=indice_key)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU()

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(self.relu(self.bn2(out.features) + identity))


def _down(c_in: int, c_out: int, kernel, stride, padding, key: str) -> spconv.SparseSequential:
    return spconv.SparseSequential(
        spconv.SparseConv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False, indice_key=key),
        _bn(c_out), nn.ReLU())


class SparseResNetBackbone(nn.Module):
    """forward(SparseVoxels) -> SparseVoxels (8x downsampled in x/y, `out_channels` features)."""

    def __init__(self, in_channels: int, channels=(16, 32, 64, 128), out_channels: int = 128,
                 last_z_padding: int = 0, z_down: bool = True, blocks_per_stage: int = 2,
                 block_bias: bool = False, grid_pad=(0, 0, 0)):
        super().__init__()
        self.grid_pad = as_int_tuple(grid_pad, 3, "grid_pad")
        c1, c2, c3, c4 = as_int_tuple(channels, 4, "channels")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels) if z_down else c4
        self.z_down = bool(z_down)
        self.last_z_padding = int(last_z_padding)
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(in_channels, c1, 3, padding=1, bias=False, indice_key="subm1"), _bn(c1), nn.ReLU())

        def blocks(c, key):
            return [SparseBasicBlock(c, key, bool(block_bias)) for _ in range(blocks_per_stage)]

        self.conv1 = spconv.SparseSequential(*blocks(c1, "res1"))
        self.conv2 = spconv.SparseSequential(_down(c1, c2, 3, 2, 1, "spconv2"), *blocks(c2, "res2"))
        self.conv3 = spconv.SparseSequential(_down(c2, c3, 3, 2, 1, "spconv3"), *blocks(c3, "res3"))
        self.conv4 = spconv.SparseSequential(_down(c3, c4, 3, 2, (last_z_padding, 1, 1), "spconv4"),
                                             *blocks(c4, "res4"))
        self.conv_out = _down(c4, out_channels, (3, 1, 1), (2, 1, 1), 0, "spconv_down2") if z_down else None

    def output_grid(self, spatial_shape) -> tuple[int, int, int]:
        """Output `(nz, ny, nx)` for an input grid, by spconv's size rule `(n + 2p - k) // s + 1`, without running
        the network (the detector's build-time probe would run it on the CPU, where spconv-triton cannot)."""
        shape = [int(n) + p for n, p in zip(spatial_shape, self.grid_pad)]  # as forward pads the grid
        downs = [((3, 3, 3), (2, 2, 2), (1, 1, 1))] * 2 + [((3, 3, 3), (2, 2, 2), (self.last_z_padding, 1, 1))]
        if self.conv_out is not None:
            downs.append(((3, 1, 1), (2, 1, 1), (0, 0, 0)))
        for kernel, stride, padding in downs:
            shape = [(n + 2 * p - k) // st + 1 for n, k, st, p in zip(shape, kernel, stride, padding)]
        return tuple(shape)

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        check_voxels(voxels, self.in_channels, type(self).__name__)
        grid = [int(s) + p for s, p in zip(voxels.spatial_shape, self.grid_pad)]
        x = spconv.SparseConvTensor(voxels.features, voxels.coords.int(), grid, voxels.batch_size)
        with one_thread(voxels.features.device):
            x = self.conv4(self.conv3(self.conv2(self.conv1(self.conv_input(x)))))
            if self.conv_out is not None:
                x = self.conv_out(x)
        shape = tuple(int(s) for s in x.spatial_shape)
        # output voxel size = input voxel size x total stride per axis (x, y, z)
        strides = (8, 8, 16 if self.conv_out is not None else 8)
        voxel_size = tuple(float(v) * s for v, s in zip(voxels.voxel_size, strides))
        return SparseVoxels(x.features, x.indices.to(voxels.coords.dtype), shape, voxels.batch_size,
                            voxel_size, voxels.point_range)
