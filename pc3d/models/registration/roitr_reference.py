"""RoITr as its official code (haoyu94/RoITr) computes it: the network behind `RoITrConfig(architecture="reference")`.

pc3d's own RoITr (`roitr.py`, the default architecture) is a re-reading of the paper; this module follows the
reference forward pass operation for operation, so that a converted official checkpoint computes the same
numbers. Differences from pc3d's own model are listed in docs/reference_parity.md ("RoITr"). In short:

- Sampling and grouping use the tie-exact CUDA `pointops` rules (`knn_pointops`, `farthest_point_sample_pointops`):
  FPS starts at index 0; every kNN asks for k + 1 neighbours and drops the first.
- PPF = [|d|, angle(n_c, d), angle(n_nb, d), angle(n_c, n_nb)] with d = neighbour - centre, angles as
  atan2(|a x b|, a . b) / pi (so in [0, 1]), distance unscaled; embedded by one linear layer.
- Local attention: multi-head, logits q.(k + W_p e) / sqrt(d_head), values v + W_vp e, then linear, residual on
  the centre's projected feature, LayerNorm, output projection; a block adds LayerNorm + residual + ReLU.
- Encoder (stride 1, 4, 4, 4; kNN 8, 16, 16, 16; blocks 2, 3, 3, 3), decoder of 3-NN interpolation
  (inverse distance + 1e-8) with the head level mixing in the cloud mean. Widths 64/128/256/256 times
  `width_factor`.
- Superpoint features: a GeoTransformer (geometric structure embedding; self layers that also output a
  position state, cross layers that add it to queries and keys) on the ENCODER's coarsest features; the
  decoder never sees its output. Then linear + L2 normalisation; point features: linear to 256 * factor.
- Matching: every fine point goes to its nearest superpoint (at most 64 per patch), dual-normalised
  superpoint scores, top 256 pairs; Sinkhorn (100 iterations, dustbin alpha, masked entries -1e6); mutual
  top-3 point matches with probability > 0.05.
Coordinates are float32 throughout, as in the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pc3d.ops.point_ops import farthest_point_sample_pointops, knn_pointops


def _width(base: int, factor: float) -> int:
    return int(round(base * factor))


def reference_ppf(centres, centre_normals, neighbours, neighbour_normals):
    """`(M, 3), (M, 3), (M, K, 3), (M, K, 3)` -> `(M, K, 4)` point-pair features (see module doc)."""
    c = centres.unsqueeze(1).expand(-1, neighbours.shape[1], -1)
    cn = centre_normals.unsqueeze(1).expand(-1, neighbours.shape[1], -1)
    d = neighbours - c

    def angle(a, b):
        y = torch.sum(a * b, dim=-1, keepdim=True)
        x = torch.sqrt(torch.sum(torch.cross(a, b, dim=-1) ** 2, dim=-1, keepdim=True))
        return torch.atan2(x, y) / np.pi

    dist = torch.sqrt(torch.sum(d ** 2, dim=-1, keepdim=True))
    return torch.cat([dist, angle(cn, d), angle(neighbour_normals, d), angle(cn, neighbour_normals)], dim=-1)


def neighbours_without_first(query, support, k: int) -> torch.Tensor:
    """`(M, k)` int64: the reference asks the kNN kernel for k + 1 neighbours and drops the first (usually
    the query itself)."""
    _, idx = knn_pointops(query, support, k + 1)
    return idx[:, 1:].contiguous()


class SinusoidalEmbedding(nn.Module):
    """Sinusoid with a stored frequency buffer `div_term (dim/2,)`; output channels interleave sin/cos."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim: must be even, got {dim}")
        self.dim = dim
        self.register_buffer("div_term", torch.exp(torch.arange(0, dim, 2).float() * (-np.log(10000.0) / dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        omegas = x.reshape(-1, 1, 1) * self.div_term.view(1, -1, 1)
        return torch.cat([torch.sin(omegas), torch.cos(omegas)], dim=2).view(*x.shape, self.dim)


class LocalPPFAttentionRef(nn.Module):
    """Input projection, PPF-embedded multi-head attention over each centre's neighbours, output projection."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden width {hidden} not divisible by {heads} heads")
        self.heads = heads
        self.ppf_proj = nn.Linear(4, hidden)
        self.unused_sinusoid = SinusoidalEmbedding(hidden)  # present in the reference's state, never used
        self.in_proj = nn.Linear(in_dim, hidden)
        self.q, self.k, self.v = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.p, self.vp = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.linear = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, out_dim)

    def forward(self, feats, centre_index, group_index, ppf):
        m, kk = group_index.shape
        h = self.heads
        pos = self.ppf_proj(ppf)                                   # (M, K, C)
        x = self.in_proj(feats)                                    # (N, C)
        c = x.shape[1] // h
        q = self.q(x)[centre_index].view(m, h, 1, c)
        k = self.k(x)[group_index].view(m, kk, h, c).transpose(1, 2)
        v = self.v(x)[group_index].view(m, kk, h, c).transpose(1, 2)
        p = self.p(pos).view(m, kk, h, c).transpose(1, 2)
        vp = self.vp(pos).view(m, kk, h, c).transpose(1, 2)
        scores_p = torch.einsum("bhnc,bhmc->bhnm", q, p)
        scores_e = torch.einsum("bhnc,bhmc->bhnm", q, k)
        attn = F.softmax((scores_e + scores_p) / c ** 0.5, dim=-1)
        hidden = torch.matmul(attn, v + vp).permute(0, 2, 1, 3).reshape(m, h * c)
        out = self.norm(self.linear(hidden) + x[centre_index])
        return self.out_proj(out)


class PPFBlockRef(nn.Module):
    """Self-neighbourhood PPF attention + LayerNorm + residual + ReLU (kNN and PPFs reused within a level)."""

    def __init__(self, dim: int, heads: int, nsample: int, factor: float):
        super().__init__()
        self.nsample = nsample
        self.attention = LocalPPFAttentionRef(dim, min(dim, _width(256, factor)), dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, xyz, normals, feats, group_index=None, ppf=None):
        if group_index is None:
            group_index = neighbours_without_first(xyz, xyz, self.nsample)
        if ppf is None:
            ppf = reference_ppf(xyz, normals, xyz[group_index], normals[group_index])
        centre = torch.arange(xyz.shape[0])
        out = F.relu(self.norm(self.attention(feats, centre, group_index, ppf)) + feats)
        return out, group_index, ppf


class DownRef(nn.Module):
    """FPS to N // stride (stride > 1), then PPF attention from each sampled point to its kNN in the level above."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, stride: int, nsample: int, factor: float):
        super().__init__()
        self.stride, self.nsample = stride, nsample
        self.attention = LocalPPFAttentionRef(in_dim, min(out_dim, _width(256, factor)), out_dim, heads)

    def forward(self, xyz, normals, feats):
        if self.stride != 1:
            sample = farthest_point_sample_pointops(xyz, xyz.shape[0] // self.stride)
        else:
            sample = torch.arange(xyz.shape[0])
        new_xyz, new_normals = xyz[sample], normals[sample]
        group = neighbours_without_first(new_xyz, xyz, self.nsample)
        ppf = reference_ppf(new_xyz, new_normals, xyz[group], normals[group])
        return new_xyz, new_normals, self.attention(feats, sample, group, ppf), sample


class UpRef(nn.Module):
    """Head level: concat the cloud mean (through a linear + ReLU), linear + LayerNorm + ReLU. Other levels:
    skip branch + 3-NN inverse-distance interpolation of the coarser level's projected features."""

    def __init__(self, in_dim: int, out_dim: int | None):
        super().__init__()
        self.head = out_dim is None
        if self.head:
            self.mix = nn.Sequential(nn.Linear(2 * in_dim, in_dim), nn.LayerNorm(in_dim), nn.ReLU(inplace=True))
            self.coarse = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True))
        else:
            self.mix = nn.Sequential(nn.Linear(out_dim, out_dim), nn.LayerNorm(out_dim), nn.ReLU(inplace=True))
            self.coarse = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.ReLU(inplace=True))

    def forward(self, fine_xyz, fine_feats, coarse_xyz=None, coarse_feats=None):
        if self.head:
            mean = self.coarse(fine_feats.sum(0, True) / fine_feats.shape[0]).repeat(fine_feats.shape[0], 1)
            return self.mix(torch.cat([fine_feats, mean], 1))
        dist, idx = knn_pointops(fine_xyz, coarse_xyz, 3)
        recip = 1.0 / (dist + 1e-8)
        weight = recip / torch.sum(recip, dim=1, keepdim=True)
        projected = self.coarse(coarse_feats)
        interp = torch.zeros(fine_xyz.shape[0], projected.shape[1], dtype=projected.dtype)
        for i in range(3):  # summed in neighbour order, as the reference
            interp += projected[idx[:, i]] * weight[:, i].unsqueeze(-1)
        return self.mix(fine_feats) + interp


class _FeedForward(nn.Module):
    """x -> LayerNorm(x + W2 relu(W1 x)), hidden width 2x."""

    def __init__(self, d: int):
        super().__init__()
        self.expand, self.squeeze, self.norm = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.squeeze(F.relu(self.expand(x))))


class GeoSelfLayerRef(nn.Module):
    """Self-attention with relative geometric embedding; also returns a position state: the embedding's
    value projection averaged with the attention weights computed without each node's own entry."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.p, self.vp = (nn.Linear(d, d) for _ in range(5))
        self.linear, self.norm = nn.Linear(d, d), nn.LayerNorm(d)
        self.pos_linear, self.pos_norm = nn.Linear(d, d), nn.LayerNorm(d)
        self.output, self.pos_output = _FeedForward(d), _FeedForward(d)

    def forward(self, x, emb):
        b, n, d = x.shape
        h, c = self.heads, d // self.heads
        q = self.q(x).view(b, n, h, c).transpose(1, 2)
        k = self.k(x).view(b, n, h, c).transpose(1, 2)
        v = self.v(x).view(b, n, h, c).transpose(1, 2)
        p = self.p(emb).view(b, n, n, h, c).permute(0, 3, 1, 2, 4)
        vp = self.vp(emb).view(b, n, n, h, c).permute(0, 3, 1, 2, 4)
        scores = (torch.einsum("bhnc,bhmc->bhnm", q, k) + torch.einsum("bhnc,bhnmc->bhnm", q, p)) / c ** 0.5
        eye = torch.eye(n, dtype=torch.bool).view(1, 1, n, n)
        no_self = F.softmax(scores.masked_fill(eye, float("-inf")), dim=-1)
        hidden = torch.matmul(F.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, n, d)
        pos = torch.sum(no_self.unsqueeze(-1) * vp, dim=-2).transpose(1, 2).reshape(b, n, d)
        x = self.output(self.norm(self.linear(hidden) + x))
        pos = self.pos_output(self.pos_norm(self.pos_linear(pos)))
        return x, pos


class GeoCrossLayerRef(nn.Module):
    """Cross-attention whose queries and keys carry the position states of the last self layer."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.linear, self.norm = nn.Linear(d, d), nn.LayerNorm(d)
        self.output = _FeedForward(d)

    def forward(self, x, memory, pos_x, pos_memory):
        b, n, d = x.shape
        m = memory.shape[1]
        h, c = self.heads, d // self.heads
        q = self.q(x + pos_x).view(b, n, h, c).transpose(1, 2)
        k = self.k(memory + pos_memory).view(b, m, h, c).transpose(1, 2)
        v = self.v(memory).view(b, m, h, c).transpose(1, 2)
        attn = F.softmax(torch.einsum("bhnc,bhmc->bhnm", q, k) / c ** 0.5, dim=-1)
        hidden = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        return self.output(self.norm(self.linear(hidden) + x))


def pairwise_sq_distance(x, y):
    """`x2 - 2 x.y + y2` clamped at 0 (GeoTransformer's form; keep it: distances feed the embedding)."""
    xy = torch.matmul(x, y.transpose(-1, -2))
    return (torch.sum(x ** 2, dim=-1).unsqueeze(-1) - 2 * xy + torch.sum(y ** 2, dim=-1).unsqueeze(-2)).clamp(min=0.0)


class GeometricEmbeddingRef(nn.Module):
    """GeoTransformer's geometric structure embedding: distance sinusoid + max over k anchor angles."""

    def __init__(self, d: int, sigma_d: float, sigma_a: float, angle_k: int):
        super().__init__()
        self.sigma_d, self.factor_a, self.angle_k = sigma_d, 180.0 / (sigma_a * np.pi), angle_k
        self.sinusoid = SinusoidalEmbedding(d)
        self.proj_d, self.proj_a = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, points):
        b, n, _ = points.shape
        with torch.no_grad():
            dist = torch.sqrt(pairwise_sq_distance(points, points))
            k = self.angle_k
            knn = dist.topk(k=k + 1, dim=2, largest=False)[1][:, :, 1:]
            knn_points = torch.gather(points.unsqueeze(1).expand(b, n, n, 3), 2, knn.unsqueeze(3).expand(b, n, k, 3))
            ref = (knn_points - points.unsqueeze(2)).unsqueeze(2).expand(b, n, n, k, 3)
            anc = (points.unsqueeze(1) - points.unsqueeze(2)).unsqueeze(3).expand(b, n, n, k, 3)
            angles = torch.atan2(torch.linalg.norm(torch.cross(ref, anc, dim=-1), dim=-1), torch.sum(ref * anc, dim=-1))
        d_emb = self.proj_d(self.sinusoid(dist / self.sigma_d))
        a_emb = self.proj_a(self.sinusoid(angles * self.factor_a)).max(dim=3)[0]
        return d_emb + a_emb


class GlobalTransformerRef(nn.Module):
    """in_proj, blocks of 'self' / 'cross' layers, out_proj (the two clouds are updated in sequence)."""

    def __init__(self, d: int, heads: int, blocks, sigma_d: float, sigma_a: float, angle_k: int):
        super().__init__()
        self.blocks = list(blocks)
        self.embedding = GeometricEmbeddingRef(d, sigma_d, sigma_a, angle_k)
        self.in_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.layers = nn.ModuleList([GeoSelfLayerRef(d, heads) if b == "self" else GeoCrossLayerRef(d, heads)
                                     for b in self.blocks])

    def forward(self, xyz0, xyz1, feats0, feats1):
        e0, e1 = self.embedding(xyz0), self.embedding(xyz1)
        f0, f1 = self.in_proj(feats0), self.in_proj(feats1)
        pos0 = pos1 = None
        for block, layer in zip(self.blocks, self.layers):
            if block == "self":
                f0, pos0 = layer(f0, e0)
                f1, pos1 = layer(f1, e1)
            else:
                f0 = layer(f0, f1, pos0, pos1)
                f1 = layer(f1, f0, pos1, pos0)  # sees the cloud-0 features just updated
        return self.out_proj(f0), self.out_proj(f1)


@dataclass
class ReferenceFeatures:
    """Per cloud: fine points `(N, 3)`, superpoints `(M, 3)`, point features `(N, Cf)`, L2-normalised
    superpoint features `(M, Cc)`, and every encoder level's (xyz, kNN, FPS index) for stage checks."""

    points: torch.Tensor
    nodes: torch.Tensor
    point_feats: torch.Tensor
    node_feats: torch.Tensor
    levels: list
    global_feats: torch.Tensor       # (M, Cc) superpoint transformer output, before the coarse projection


class RoITrReferenceNet(nn.Module):
    """The reference network: `forward(src_xyz, src_normals, ref_xyz, ref_normals)` -> (src, ref) features."""

    def __init__(self, factor: float = 1.0, blocks=("self", "cross") * 3, heads: int = 4):
        super().__init__()
        widths = [_width(w, factor) for w in (64, 128, 256, 256)]
        self.strides, self.nsample, depth = (1, 4, 4, 4), (8, 16, 16, 16), (2, 3, 3, 3)
        self.down = nn.ModuleList()
        self.enc_blocks = nn.ModuleList()
        in_dim = 1
        for lvl in range(4):
            self.down.append(DownRef(in_dim, widths[lvl], heads, self.strides[lvl], self.nsample[lvl], factor))
            self.enc_blocks.append(nn.ModuleList([PPFBlockRef(widths[lvl], heads, self.nsample[lvl], factor)
                                                  for _ in range(depth[lvl] - 1)]))
            in_dim = widths[lvl]
        self.up = nn.ModuleList([UpRef(widths[3], None)] + [UpRef(widths[l + 1], widths[l]) for l in (2, 1, 0)])
        self.dec_blocks = nn.ModuleList([PPFBlockRef(widths[l], heads, self.nsample[l], factor) for l in (3, 2, 1, 0)])
        d = _width(256, factor)
        self.global_transformer = GlobalTransformerRef(d, heads, blocks, 0.2, 15.0, 3)
        self.occ_proj = nn.Linear(d, 1)  # trained for an occlusion loss; unused at test time
        self.coarse_proj = nn.Linear(d, d)
        self.fine_proj = nn.Linear(widths[0], d)

    def encode(self, xyz, normals):
        feats = torch.ones(xyz.shape[0], 1, dtype=xyz.dtype)
        levels = []
        for lvl in range(4):
            xyz, normals, feats, sample = self.down[lvl](xyz, normals, feats)
            group = ppf = None
            for block in self.enc_blocks[lvl]:
                feats, group, ppf = block(xyz, normals, feats, group, ppf)
            levels.append({"xyz": xyz, "normals": normals, "feats": feats, "knn": group, "ppf": ppf, "fps": sample})
        return levels

    def decode(self, levels):
        top = levels[3]
        x = self.up[0](top["xyz"], top["feats"])
        x, _, _ = self.dec_blocks[0](top["xyz"], top["normals"], x, top["knn"], top["ppf"])
        for i, lvl in enumerate((2, 1, 0), start=1):
            cur, coarser = levels[lvl], levels[lvl + 1]
            x = self.up[i](cur["xyz"], cur["feats"], coarser["xyz"], x)
            x, _, _ = self.dec_blocks[i](cur["xyz"], cur["normals"], x, cur["knn"], cur["ppf"])
        return x

    def forward(self, src_xyz, src_normals, ref_xyz, ref_normals):
        s_levels, r_levels = self.encode(src_xyz, src_normals), self.encode(ref_xyz, ref_normals)
        s_g, r_g = self.global_transformer(s_levels[3]["xyz"].unsqueeze(0), r_levels[3]["xyz"].unsqueeze(0),
                                           s_levels[3]["feats"].unsqueeze(0), r_levels[3]["feats"].unsqueeze(0))
        out = []
        for levels, g, xyz in ((s_levels, s_g[0], src_xyz), (r_levels, r_g[0], ref_xyz)):
            fine = self.decode(levels)
            out.append(ReferenceFeatures(levels[0]["xyz"], levels[3]["xyz"], self.fine_proj(fine),
                                         F.normalize(self.coarse_proj(g), p=2, dim=1), levels, g))
        return out[0], out[1]


def square_distance_ref(a, b):
    """`(B, N, 3), (B, M, 3)` -> `(B, N, M)` as `-2 a.b + |a|^2 + |b|^2`, clamped at 1e-12 (this exact order:
    it decides ties in the nearest-superpoint assignment)."""
    dist = -2.0 * torch.matmul(a, b.permute(0, 2, 1).contiguous())
    dist += torch.sum(a ** 2, dim=-1).unsqueeze(-1)
    dist += torch.sum(b ** 2, dim=-1).unsqueeze(-2)
    return torch.clamp(dist, min=1e-12)


def point_to_node_partition(points, nodes, point_limit: int):
    """Each point joins its nearest node; a node's patch is its `point_limit` nearest members (padded with
    index N). Returns (node_masks (M,), knn_index (M, K), knn_masks (M, K))."""
    sq = square_distance_ref(nodes[None], points[None])[0]
    point_to_node = sq.min(dim=0)[1]
    node_masks = torch.zeros(nodes.shape[0], dtype=torch.bool)
    node_masks.index_fill_(0, point_to_node, True)
    member = torch.zeros_like(sq, dtype=torch.bool)
    member[point_to_node, torch.arange(points.shape[0])] = True
    sq.masked_fill_(~member, 1e12)
    knn_index = sq.topk(k=point_limit, dim=1, largest=False)[1]
    knn_masks = torch.eq(point_to_node[knn_index], torch.arange(nodes.shape[0]).unsqueeze(1))
    knn_index.masked_fill_(~knn_masks, points.shape[0])
    return node_masks, knn_index, knn_masks


def coarse_matching(ref_feats, src_feats, ref_masks, src_masks, num_correspondences: int):
    """Dual-normalised `exp(-|f_r - f_s|^2)` over non-empty superpoints; top `num_correspondences`."""
    ref_idx = torch.nonzero(ref_masks, as_tuple=True)[0]
    src_idx = torch.nonzero(src_masks, as_tuple=True)[0]
    scores = torch.exp(-square_distance_ref(ref_feats[ref_idx][None], src_feats[src_idx][None]))[0]
    scores = (scores / (scores.sum(dim=1, keepdim=True) + 1e-8)) * (scores / (scores.sum(dim=0, keepdim=True) + 1e-8))
    k = min(num_correspondences, scores.numel())
    corr_scores, flat = scores.view(-1).topk(k=k, largest=True)
    return ref_idx[flat // scores.shape[1]], src_idx[flat % scores.shape[1]], corr_scores


class SinkhornRef(nn.Module):
    """Log-domain Sinkhorn with a learnable dustbin score `alpha`; masked entries are set to -1e6."""

    def __init__(self, iterations: int = 100):
        super().__init__()
        self.iterations = iterations
        self.alpha = nn.Parameter(torch.tensor(1.0))

    def forward(self, scores, row_masks, col_masks):
        b, m, n = scores.shape
        ninf = torch.tensor(-1e6)
        pad_rows = torch.zeros(b, m + 1, dtype=torch.bool)
        pad_rows[:, :m] = ~row_masks
        pad_cols = torch.zeros(b, n + 1, dtype=torch.bool)
        pad_cols[:, :n] = ~col_masks
        padded = torch.cat([torch.cat([scores, self.alpha.expand(b, m, 1)], dim=-1), self.alpha.expand(b, 1, n + 1)], dim=1)
        padded[torch.logical_or(pad_rows.unsqueeze(2), pad_cols.unsqueeze(1))] = ninf
        rows, cols = row_masks.float().sum(1), col_masks.float().sum(1)
        norm = -torch.log(rows + cols)
        log_mu = torch.empty(b, m + 1)
        log_mu[:, :m] = norm.unsqueeze(1)
        log_mu[:, m] = torch.log(cols) + norm
        log_mu[pad_rows] = ninf
        log_nu = torch.empty(b, n + 1)
        log_nu[:, :n] = norm.unsqueeze(1)
        log_nu[:, n] = torch.log(rows) + norm
        log_nu[pad_cols] = ninf
        u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
        for _ in range(self.iterations):
            u = log_mu - torch.logsumexp(padded + v.unsqueeze(1), dim=2)
            v = log_nu - torch.logsumexp(padded + u.unsqueeze(2), dim=1)
        return padded + u.unsqueeze(2) + v.unsqueeze(1) - norm.unsqueeze(1).unsqueeze(2)


def fine_matching(ref_points, src_points, ref_masks, src_masks, log_scores, k: int = 3, threshold: float = 0.05,
                  mutual: bool = True):
    """Mutual (or either-side) top-k of `exp(log_scores)` above `threshold` inside valid entries.
    Returns (ref_corr (C, 3), src_corr (C, 3), scores (C,), (patch, row, column) indices) in that order."""
    score = torch.exp(log_scores)
    b, r, c = score.shape
    batch = torch.arange(b)
    row_top, row_idx = score.topk(k=k, dim=2)
    row_mat = torch.zeros_like(score)
    row_mat[batch.view(b, 1, 1).expand(-1, r, k), torch.arange(r).view(1, r, 1).expand(b, -1, k), row_idx] = row_top
    col_top, col_idx = score.topk(k=k, dim=1)
    col_mat = torch.zeros_like(score)
    col_mat[batch.view(b, 1, 1).expand(-1, k, c), col_idx, torch.arange(c).view(1, 1, c).expand(b, k, -1)] = col_top
    row_ok, col_ok = torch.gt(row_mat, threshold), torch.gt(col_mat, threshold)
    corr = torch.logical_and(row_ok, col_ok) if mutual else torch.logical_or(row_ok, col_ok)
    corr = torch.logical_and(corr, torch.logical_and(ref_masks.unsqueeze(2), src_masks.unsqueeze(1)))
    score = score * corr.float()
    bi, ri, ci = torch.nonzero(corr, as_tuple=True)
    return ref_points[bi, ri], src_points[bi, ci], score[bi, ri, ci], (bi, ri, ci)


@dataclass
class ReferenceMatches:
    """Outputs of the reference pipeline for one pair (RoITr's 'tgt' is pc3d's ref)."""

    src: ReferenceFeatures
    ref: ReferenceFeatures
    src_node_corr: torch.Tensor      # (P,) superpoint indices
    ref_node_corr: torch.Tensor
    node_corr_scores: torch.Tensor
    src_corr_points: torch.Tensor    # (C, 3)
    ref_corr_points: torch.Tensor
    corr_scores: torch.Tensor        # (C,)
    src_index: torch.Tensor          # (C,) indices into src.points
    ref_index: torch.Tensor
    patch_index: torch.Tensor        # (C,) which superpoint pair each match came from


def reference_match(net: RoITrReferenceNet, sinkhorn: SinkhornRef, src: ReferenceFeatures, ref: ReferenceFeatures, *,
                    num_coarse: int = 256, point_limit: int = 64, topk: int = 3, threshold: float = 0.05,
                    mutual: bool = True) -> ReferenceMatches:
    s_masks, s_knn, s_knn_masks = point_to_node_partition(src.points, src.nodes, point_limit)
    r_masks, r_knn, r_knn_masks = point_to_node_partition(ref.points, ref.nodes, point_limit)
    s_pad = torch.cat([src.points, torch.zeros_like(src.points[:1])], 0)
    r_pad = torch.cat([ref.points, torch.zeros_like(ref.points[:1])], 0)
    r_nodes, s_nodes, node_scores = coarse_matching(ref.node_feats, src.node_feats, r_masks, s_masks, num_coarse)
    s_idx, r_idx = s_knn[s_nodes], r_knn[r_nodes]
    s_m, r_m = s_knn_masks[s_nodes], r_knn_masks[r_nodes]
    s_feat = torch.cat([src.point_feats, torch.zeros_like(src.point_feats[:1])], 0)[s_idx]
    r_feat = torch.cat([ref.point_feats, torch.zeros_like(ref.point_feats[:1])], 0)[r_idx]
    scores = torch.einsum("bnd,bmd->bnm", r_feat, s_feat) / src.point_feats.shape[1] ** 0.5
    log_plan = sinkhorn(scores, r_m, s_m)[:, :-1, :-1]
    ref_c, src_c, corr_scores, (bi, ri, ci) = fine_matching(r_pad[r_idx], s_pad[s_idx], r_m, s_m, log_plan, topk,
                                                            threshold, mutual)
    return ReferenceMatches(src, ref, s_nodes, r_nodes, node_scores, src_c, ref_c, corr_scores, s_idx[bi, ci],
                            r_idx[bi, ri], bi)


def reference_ransac(src_corr, ref_corr, scores, n_points: int = 1000, seed: int = 0):
    """Pose as RoITr's evaluation gets it: at most `n_points` matches drawn without replacement with
    probability proportional to their score (legacy numpy stream `seed`), then Open3D RANSAC on them
    (0.05 m, 3 points, edge-length 0.9 and distance checkers, 50000 iterations; the reference's confidence
    argument 1000 is clamped by Open3D to 1, i.e. no early stop). Open3D's own generator is seeded with
    `seed` too, which the reference does not do (its poses vary from run to run).
    Returns (transform (4, 4) float64, kept indices)."""
    from pc3d.ops.weighted_sampling import sample_by_weight

    from .pose import ransac_correspondences

    keep = sample_by_weight(scores.detach().cpu().numpy(), n_points, np.random.RandomState(seed))
    src = src_corr.detach().cpu().numpy()[keep]
    ref = ref_corr.detach().cpu().numpy()[keep]
    transform, _ = ransac_correspondences(src, ref, 0.05, 50000, 1000.0, seed=seed)
    return transform, keep
