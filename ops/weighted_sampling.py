"""Weighted sampling without replacement, as RoITr's evaluation draws the matches it gives RANSAC."""
from __future__ import annotations

import numpy as np
import torch


def sample_by_weight(weights, n: int, rng: np.random.RandomState) -> np.ndarray:
    """All indices `0..K-1` if K <= n, else `rng.choice(K, n, replace=False, p=w / sum(w))`.

    The probabilities are normalised in float32 torch, as the reference does, and `rng` is a legacy
    `RandomState` so that one stream can be consumed pair after pair exactly like its global numpy state.
    """
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    if w.dim() != 1:
        raise ValueError(f"weights: expected (K,), got {tuple(w.shape)}")
    if w.shape[0] <= n:
        return np.arange(w.shape[0])
    prob = w / torch.sum(w)
    return rng.choice(prob.shape[0], n, replace=False, p=prob.numpy())
