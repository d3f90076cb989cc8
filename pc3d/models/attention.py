"""Attention building blocks shared by the sparse voxel transformer backbones.

- `GroupAttention`: multi-head attention over padded groups / sets `(G, L, C)` with a key padding
  mask, through `torch.nn.functional.scaled_dot_product_attention` (DSVT sets, FlatFormer groups,
  SST regions).
- `scattered_linear_attention` / `ScatteredLinearAttention`: ScatterFormer's linear attention over
  variable-length window segments with segment reductions (no padding).
- `LearnedPositionEmbedding` (DSVT) and `sinusoidal_position_embedding` (FlatFormer / SST).
- `gather_groups` / `scatter_groups`: voxel rows <-> padded groups using the partition ops' index maps.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from pc3d.ops import scatter as _scatter


def activation_fn(name: str):
    """`relu` | `gelu` activation function by name."""
    table = {"relu": F.relu, "gelu": F.gelu}
    if name not in table:
        raise ValueError(f"activation: expected one of {sorted(table)}, got {name!r}")
    return table[name]


def gather_groups(features: torch.Tensor, voxel_index: torch.Tensor) -> torch.Tensor:
    """(V, C) voxel features -> (G, L, C) padded groups for `voxel_index` (G, L)."""
    return features[voxel_index]


def scatter_groups(group_features: torch.Tensor, slot_of_voxel: torch.Tensor) -> torch.Tensor:
    """(G, L, C) group outputs -> (V, C) voxel rows, reading each voxel's own (unmasked) slot.

    A gather instead of an index_put: each voxel gets exactly one output and the gradient is exact
    (no duplicate slots receive gradient), and it exports to ONNX as a plain Gather.
    """
    return group_features.reshape(-1, group_features.shape[-1])[slot_of_voxel]


class GroupAttention(nn.Module):
    """Multi-head self-attention inside each group, ignoring masked keys.

    forward(x (G, L, C), pos (G, L, C) or None, key_padding_mask (G, L) bool, True = ignore)
    -> (G, L, C). As in DSVT / FlatFormer the position embedding is added to queries and keys only.
    Every group must keep at least one unmasked key (true for all pc3d partitions).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        g, l, _ = t.shape
        return t.reshape(g, l, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        qk_in = x if pos is None else x + pos
        q, k, v = self._heads(self.q_proj(qk_in)), self._heads(self.k_proj(qk_in)), self._heads(self.v_proj(x))
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = ~key_padding_mask[:, None, None, :]  # SDPA: True = may attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        g, h, l, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(g, l, h * d))


class FeedForward(nn.Module):
    """Linear -> activation -> dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act = activation_fn(activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class PaddedGroupLayer(nn.Module):
    """Post-norm transformer layer on voxels partitioned into padded groups (DSVT's SetAttention,
    FlatFormer's BasicBlock, SST's layer):

        y = norm1(x + scatter(attn(gather(x), gather(pos), mask)));  out = norm2(y + ffn(y))

    forward(x (V, C), pos (V, C) or None, voxel_index (G, L), key_padding_mask (G, L),
    slot_of_voxel (V,)) -> (V, C).
    """

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, activation: str = "gelu",
                 dropout: float = 0.0):
        super().__init__()
        self.attn = GroupAttention(dim, num_heads, dropout)
        self.ffn = FeedForward(dim, dim_feedforward, activation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, pos, voxel_index, key_padding_mask, slot_of_voxel):
        groups = gather_groups(x, voxel_index)
        group_pos = None if pos is None else gather_groups(pos, voxel_index)
        attended = scatter_groups(self.attn(groups, group_pos, key_padding_mask), slot_of_voxel)
        x = self.norm1(x + attended)
        return self.norm2(x + self.ffn(x))


# ---------------------------------------------------------------- linear attention (ScatterFormer)
def scattered_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: torch.Tensor,
                               num_windows: int, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention inside variable-length windows, no padding.

    q, k: (V, H, d) non-negative feature maps (e.g. ReLU); v: (V, H, e); window: (V,) int64 window
    of every row in [0, num_windows). For each window w: `KV_w = sum_i k_i^T v_i` (H, d, e),
    `z_w = sum_i k_i` (H, d); output `y_i = q_i KV_w / (q_i . z_w + eps)`  -> (V, H, e).
    """
    v_count, heads, d = k.shape
    e = v.shape[-1]
    kv = torch.einsum("vhd,vhe->vhde", k, v).reshape(v_count, heads * d * e)
    # Window sums with segment_sum (scatter_add), not index_add: index_add exports as ONNX
    # ScatterND(reduction="add"), which onnxruntime's CPU kernel splits across threads without guarding
    # duplicate rows, so with 2 threads updates of a window's voxels were lost at random (parity 4e-7 to
    # 1.9e-2 run to run on the KITTI scan). scatter_add exports as ScatterElements, summed serially in
    # torch's row order: torch and the graph agree to ~1e-7 with any thread count. Two sums, not one over
    # a concatenation: the (V, H*d*e) copy doubled the layer's time.
    kv_w = _scatter.segment_sum(kv, window, num_windows)[window].reshape(v_count, heads, d, e)
    z_w = _scatter.segment_sum(k.reshape(v_count, heads * d), window, num_windows)[window].reshape(v_count, heads, d)
    numerator = torch.einsum("vhd,vhde->vhe", q, kv_w)
    denominator = (q * z_w).sum(-1, keepdim=True) + eps
    return numerator / denominator


class ScatteredLinearAttention(nn.Module):
    """ScatterFormer attention: ReLU feature maps, segment-wise `K^T V`; forward(x (V, C), window (V,),
    num_windows) -> (V, C)."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.eps = dim, num_heads, eps
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, window: torch.Tensor, num_windows: int) -> torch.Tensor:
        v_count = x.shape[0]
        q, k, v = self.qkv(x).reshape(v_count, 3, self.num_heads, self.dim // self.num_heads).unbind(1)
        out = scattered_linear_attention(F.relu(q), F.relu(k), v, window, num_windows, self.eps)
        return self.out_proj(out.reshape(v_count, self.dim))


# ---------------------------------------------------------------- position embeddings
class LearnedPositionEmbedding(nn.Module):
    """DSVT's learned embedding: Linear -> BatchNorm -> ReLU -> Linear; (V, in_dim) -> (V, dim)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                                 nn.Linear(dim, dim))

    def forward(self, location: torch.Tensor) -> torch.Tensor:
        return self.net(location)


def sinusoidal_position_embedding(location: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """FlatFormer-style sin/cos embedding of (V, D) coordinates (D = 2: x, y; or 3) -> (V, dim).

    Each coordinate gets `2 * (dim // (2 D))` channels (sin on even, cos on odd frequency slots);
    leftover channels are zero.
    """
    v_count, ndim = location.shape
    per_axis = (dim // (ndim * 2)) * 2
    if per_axis == 0:
        raise ValueError(f"dim ({dim}) too small for a {ndim}-D sinusoidal embedding")
    index = torch.arange(per_axis, dtype=torch.float32, device=location.device)
    inv_freq = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / per_axis)
    phase = location.float()[:, :, None] / inv_freq              # (V, D, per_axis)
    emb = torch.stack([phase[..., 0::2].sin(), phase[..., 1::2].cos()], dim=-1).reshape(v_count, ndim * per_axis)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, emb.new_zeros(v_count, dim - emb.shape[1])], dim=1)
    return emb
