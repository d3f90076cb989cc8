"""CenterPoint losses: Gaussian focal loss on heatmaps, masked L1 on regression, IoU-branch L1."""
from __future__ import annotations

import torch


def gaussian_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CornerNet / CenterNet focal loss, summed and divided by the number of peaks (>= 1).

    logits, target: `(B, K, H, W)`; `target == 1` marks the centres, other cells are
    down-weighted by `(1 - target) ** beta` near a centre.
    """
    pred = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    negative = 1.0 - positive
    pos_loss = torch.log(pred) * (1 - pred).pow(alpha) * positive
    neg_loss = torch.log(1 - pred) * pred.pow(alpha) * (1 - target).pow(beta) * negative
    num_pos = positive.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def gather_at(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """feature `(B, C, H, W)`, index `(B, M)` flat cell indices -> `(B, M, C)`."""
    b, c = feature.shape[:2]
    flat = feature.reshape(b, c, -1).transpose(1, 2)
    return torch.gather(flat, 1, index.unsqueeze(-1).expand(-1, -1, c))


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   code_weights: torch.Tensor | None = None) -> torch.Tensor:
    """pred, target `(B, M, C)`, mask `(B, M)` -> scalar: L1 summed over valid slots and weighted codes,
    divided by the number of valid objects (>= 1)."""
    m = mask.unsqueeze(-1).to(pred.dtype)
    loss = (pred - target).abs() * m
    loss = torch.nan_to_num(loss)
    if code_weights is not None:
        loss = loss * code_weights
    return loss.sum() / mask.sum().clamp(min=1).to(pred.dtype)
