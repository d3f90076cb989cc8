"""DSVT backbone (Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets", CVPR 2023).

One class covers both variants:
- DSVT-P (pillars): one stage, windows `(12, 12, 1)`, output on the input pillars.
- DSVT-V (voxels): several stages of 3D windows separated by attention-style 3D pooling
  (`downsample_stride`, e.g. `(1, 1, 4)`), output on the pooled voxels with the new grid.

Per stage, two window configurations are used: shift 0 (window `window_shape`, shift `shifts[s][0]`)
and shift 1 (the hybrid window `window_shape * hybrid_factor`, shift `shifts[s][1]`). Block `b` uses
shift `b % 2` (`shift_windows=True`) and is a y-set layer followed by an x-set layer (rotated sets).
Where pc3d's defaults differ from the reference implementation (Haiyang-W/DSVT), an option selects
the reference behaviour; converted reference checkpoints set them all (docs/reference_parity.md):
- `pos_embed_shift`: "block" (default) computes the position embedding of both layers of a block from
  the in-window coordinates of the block's own shift; "layer" is the reference: layer `i` gets the
  embedding of shift `i`'s coordinates whatever shift its sets come from;
- `shift_schedule`: "stage" (default) alternates shifts by the block index within a stage; "global"
  is the reference: one block counter runs across all stages;
- `pool_empty`: "masked" (default) masks empty child slots in 3D pooling; "zeros" is the reference:
  empty slots hold zero vectors that enter the max (query) and the attention as keys;
- `voxel_order`: "zyx" (default) orders pooled voxels by (batch, z, y, x); "xyz" is the reference's
  (batch, x, y, z) order;
- `pos_pi`: the constant of `normalize_pos` (math.pi; the reference uses 3.1415).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pc3d.models.attention import LearnedPositionEmbedding, PaddedGroupLayer
from pc3d.ops.partition.rotated_sets import rotated_set_pair
from pc3d.ops.partition.windows import sorted_segments
from pc3d.ops.voxelize import linear_voxel_key
from pc3d.structures import SparseVoxels

from ._common import as_int_tuple, check_voxels, per_stage


class DSVTEncoderLayer(nn.Module):
    """DSVT encoder layer: set attention + FFN (`PaddedGroupLayer`) followed by residual + LayerNorm."""

    def __init__(self, dim, num_heads, dim_feedforward, activation, dropout):
        super().__init__()
        self.set_attn = PaddedGroupLayer(dim, num_heads, dim_feedforward, activation, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, pos, sets):
        out = self.set_attn(x, pos, sets.voxel_index, sets.key_padding_mask, sets.slot_of_voxel)
        return self.norm(out + x)


class AttentionPooling3d(nn.Module):
    """DSVT's attention pooling of the child voxels of one parent cell.

    forward(children (P, K, C), empty (P, K) bool True on empty child slots) -> (P, C): the query is
    the max over non-empty children, keys are children + a learned per-slot embedding.
    """

    def __init__(self, dim: int, pool_volume: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.slot_embedding = nn.Parameter(torch.randn(pool_volume, dim) * 0.01)
        self.norm = nn.LayerNorm(dim)

    def forward(self, children: torch.Tensor, empty: torch.Tensor | None) -> torch.Tensor:
        """`empty=None`: the reference's behaviour, empty slots are zero children like any other."""
        if empty is None:
            query = children.amax(dim=1, keepdim=True)
        else:
            query = children.masked_fill(empty[..., None], float("-inf")).amax(dim=1, keepdim=True)
        key = children + self.slot_embedding[None]
        out = self.attn(query, key, children, key_padding_mask=empty, need_weights=False)[0]
        return self.norm(out + query).squeeze(1)


class DSVT(nn.Module):
    """DSVT-P / DSVT-V backbone: `forward(SparseVoxels) -> SparseVoxels`.

    Args (per-stage lists; a scalar / single triple applies to every stage):
        in_channels: input feature width (a Linear projects it to `dims[0]` when different).
        window_shape: per stage (wx, wy, wz); the number of stages is its length.
        set_size: voxels per set S (36 pillars / 48 voxels in the paper).
        dims, depths (blocks per stage), num_heads, dim_feedforward.
        hybrid_factor: (fx, fy, fz) window multiplier of shift configuration 1.
        shifts: per stage ((sx, sy, sz) of shift 0, (sx, sy, sz) of shift 1); default
            ((0, 0, 0), half the base window in x and y).
        shift_windows: alternate the two configurations across blocks (else always shift 0).
        downsample_stride: num_stages - 1 strides (sx, sy, sz) of the 3D pooling between stages.
        normalize_pos: scale in-window coordinates to [-pi, pi) before the position embedding.
        pos_embed_shift, shift_schedule, pool_empty, voxel_order, pos_pi: reference-parity options,
            see the module docstring.
    """

    def __init__(self, in_channels: int, window_shape=((12, 12, 1),), set_size=36, dims=192, depths=4,
                 num_heads=8, dim_feedforward=384, hybrid_factor=(2, 2, 1), shifts=None,
                 shift_windows: bool = True, downsample_stride=(), activation: str = "gelu",
                 dropout: float = 0.0, normalize_pos: bool = False, pool_heads: int = 8,
                 pos_embed_shift: str = "block", shift_schedule: str = "stage", pool_empty: str = "masked",
                 voxel_order: str = "zyx", pos_pi: float = math.pi):
        super().__init__()
        for name, value, allowed in (("pos_embed_shift", pos_embed_shift, ("block", "layer")),
                                     ("shift_schedule", shift_schedule, ("stage", "global")),
                                     ("pool_empty", pool_empty, ("masked", "zeros")),
                                     ("voxel_order", voxel_order, ("zyx", "xyz"))):
            if value not in allowed:
                raise ValueError(f"DSVT {name}: expected one of {allowed}, got {value!r}")
        self.pos_embed_shift, self.shift_schedule = pos_embed_shift, shift_schedule
        self.pool_empty, self.voxel_order, self.pos_pi = pool_empty, voxel_order, float(pos_pi)
        if len(window_shape) and isinstance(window_shape[0], int):
            window_shape = [window_shape]
        self.window_shape = [as_int_tuple(w, 3, "window_shape") for w in window_shape]
        n = self.num_stages = len(self.window_shape)
        self.set_size = [int(s) for s in per_stage(set_size, n, "set_size")]
        self.dims = [int(d) for d in per_stage(dims, n, "dims")]
        self.depths = [int(d) for d in per_stage(depths, n, "depths")]
        self.num_heads = [int(h) for h in per_stage(num_heads, n, "num_heads")]
        ffn = [int(f) for f in per_stage(dim_feedforward, n, "dim_feedforward")]
        hybrid = as_int_tuple(hybrid_factor, 3, "hybrid_factor")
        self.hybrid_window = [tuple(w * h for w, h in zip(win, hybrid)) for win in self.window_shape]
        if shifts is None:
            shifts = [((0, 0, 0), (w[0] // 2, w[1] // 2, 0)) for w in self.window_shape]
        self.shifts = [tuple(as_int_tuple(s, 3, "shifts") for s in stage) for stage in per_stage(shifts, n, "shifts")]
        if any(len(stage) != 2 for stage in self.shifts):
            raise ValueError("shifts: each stage needs two (sx, sy, sz) shifts (shift 0, shift 1)")
        self.shift_windows = bool(shift_windows)
        if len(downsample_stride) and isinstance(downsample_stride[0], int):
            downsample_stride = [downsample_stride]
        self.downsample_stride = [as_int_tuple(s, 3, "downsample_stride") for s in downsample_stride]
        if len(self.downsample_stride) != n - 1:
            raise ValueError(f"downsample_stride: expected {n - 1} strides for {n} stages, got {len(self.downsample_stride)}")
        self.normalize_pos = bool(normalize_pos)
        self.in_channels = int(in_channels)
        self.out_channels = self.dims[-1]

        self.input_proj = nn.Identity() if in_channels == self.dims[0] else nn.Linear(in_channels, self.dims[0])
        self.stages = nn.ModuleList()
        self.block_norms = nn.ModuleList()
        self.pos_embeds = nn.ModuleList()
        for s in range(n):
            pos_dim = 3 if self.window_shape[s][2] > 1 else 2
            blocks, norms, embeds = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
            for _ in range(self.depths[s]):
                blocks.append(nn.ModuleList([
                    DSVTEncoderLayer(self.dims[s], self.num_heads[s], ffn[s], activation, dropout)
                    for _ in range(2)]))  # y-set layer, x-set layer
                norms.append(nn.LayerNorm(self.dims[s]))
                embeds.append(nn.ModuleList([LearnedPositionEmbedding(pos_dim, self.dims[s]) for _ in range(2)]))
            self.stages.append(blocks)
            self.block_norms.append(norms)
            self.pos_embeds.append(embeds)
        self.pools = nn.ModuleList()
        for s, stride in enumerate(self.downsample_stride):
            pool = nn.Module()
            pool.attn = AttentionPooling3d(self.dims[s], math.prod(stride), pool_heads)
            pool.proj = nn.Identity() if self.dims[s] == self.dims[s + 1] else nn.Linear(self.dims[s], self.dims[s + 1])
            self.pools.append(pool)
        self._reset_parameters()

    def _reset_parameters(self):
        for name, p in self.named_parameters():
            if p.dim() > 1 and "slot_embedding" not in name:
                nn.init.xavier_uniform_(p)

    def _location(self, coords_in_window: torch.Tensor, window) -> torch.Tensor:
        wx, wy, wz = window
        z, y, x = coords_in_window.float().unbind(1)
        axes = [(x, wx), (y, wy)] + ([(z, wz)] if wz > 1 else [])
        loc = [(c - w / 2) / w * 2 * self.pos_pi if self.normalize_pos else c - w / 2 for c, w in axes]
        return torch.stack(loc, dim=1)

    def _run_stage(self, s: int, x: torch.Tensor, coords: torch.Tensor, shape) -> torch.Tensor:
        configs = []
        for shift_id, window in enumerate((self.window_shape[s], self.hybrid_window[s])):
            shift = self.shifts[s][shift_id]
            sets = rotated_set_pair(coords, shape, window, self.set_size[s], shift)  # (y sets, x sets)
            configs.append((sets, self._location(sets[0].coords_in_window, window)))
        # the reference counts blocks across stages: a stage of one block after a stage of one block uses shift 1
        first_block = sum(self.depths[:s]) if self.shift_schedule == "global" else 0
        for b, (layers, norm) in enumerate(zip(self.stages[s], self.block_norms[s])):
            sets, location = configs[(first_block + b) % 2 if self.shift_windows else 0]
            residual = x
            for i, (layer, embed, layer_sets) in enumerate(zip(layers, self.pos_embeds[s][b], sets)):
                # "layer": the reference's embedding of layer i comes from shift i's in-window coordinates
                loc = configs[i][1] if self.pos_embed_shift == "layer" else location
                x = layer(x, embed(loc), layer_sets)
            x = norm(x + residual)
        return x

    def _pool(self, s: int, x: torch.Tensor, coords: torch.Tensor, shape):
        sx, sy, sz = self.downsample_stride[s]
        nz, ny, nx = shape
        new_shape = (math.ceil(nz / sz), math.ceil(ny / sy), math.ceil(nx / sx))
        b, z, y, x_ = coords.unbind(1)
        pz, py, px = z // sz, y // sy, x_ // sx
        if self.voxel_order == "xyz":  # the reference's order of pooled voxels: batch, then x, y, z
            parent_id = linear_voxel_key((b, px, py, pz), new_shape[::-1])
        else:
            parent_id = linear_voxel_key((b, pz, py, px), new_shape)
        child = linear_voxel_key((x_ % sx, y % sy, z % sz), (sx, sy, sz))  # DSVT's x-major slot order
        seg = sorted_segments(parent_id)
        parent = torch.empty_like(seg.segment)
        parent[seg.order] = seg.segment
        num_parents = seg.starts.shape[0]
        volume = sx * sy * sz
        children = x.new_zeros(num_parents, volume, x.shape[1])
        children = children.index_put((parent, child), x)
        empty = None
        if self.pool_empty == "masked":
            empty = torch.ones(num_parents, volume, dtype=torch.bool, device=x.device)
            empty = empty.index_put((parent, child), torch.zeros_like(child, dtype=torch.bool))
        pool = self.pools[s]
        pooled = pool.proj(pool.attn(children, empty))
        first = seg.order[seg.starts]
        new_coords = torch.stack([b[first], pz[first], py[first], px[first]], dim=1)
        return pooled, new_coords, new_shape

    def forward(self, voxels: SparseVoxels) -> SparseVoxels:
        check_voxels(voxels, self.in_channels, type(self).__name__)
        x = self.input_proj(voxels.features)
        coords = voxels.coords.long()
        shape = voxels.spatial_shape
        voxel_size = tuple(voxels.voxel_size)
        for s in range(self.num_stages):
            x = self._run_stage(s, x, coords, shape)
            if s < self.num_stages - 1:
                x, coords, shape = self._pool(s, x, coords, shape)
                stride = self.downsample_stride[s]
                voxel_size = (voxel_size[0] * stride[0], voxel_size[1] * stride[1], voxel_size[2] * stride[2])
        if self.num_stages == 1:
            return voxels.with_features(x)
        return SparseVoxels(x, coords.to(voxels.coords.dtype), shape, voxels.batch_size, voxel_size,
                            voxels.point_range)
