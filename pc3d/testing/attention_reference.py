"""Dense masked attention: the brute-force reference the grouped attention layers are tested against."""
from __future__ import annotations

import math

import torch


def naive_masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Dense reference: softmax(q k^T / sqrt(d) with -inf on masked keys) v; (G, H, L, d) inputs."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
