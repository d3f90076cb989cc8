"""Log-domain Sinkhorn optimal transport with a learnable dustbin (SuperGlue / GeoTransformer style)."""
from __future__ import annotations


import torch
from torch import nn


def log_sinkhorn(scores: torch.Tensor, log_mu: torch.Tensor, log_nu: torch.Tensor, iterations: int) -> torch.Tensor:
    """Sinkhorn in log space. scores `(B, M, N)`, log marginals `(B, M)` / `(B, N)` -> log plan `(B, M, N)`."""
    u = torch.zeros_like(log_mu)
    v = torch.zeros_like(log_nu)
    for _ in range(iterations):
        u = log_mu - torch.logsumexp(scores + v.unsqueeze(1), dim=2)
        v = log_nu - torch.logsumexp(scores + u.unsqueeze(2), dim=1)
    return scores + u.unsqueeze(2) + v.unsqueeze(1)


class LearnableLogOptimalTransport(nn.Module):
    """Augment `(B, M, N)` scores with a dustbin row/column (learnable score `alpha`) and run Sinkhorn.

    Rows/columns masked out (`row_mask`/`col_mask` False) get zero mass. Returns the log assignment
    `(B, M + 1, N + 1)` normalised so that a real row sums to ~1 (i.e. log of a per-row probability).
    """

    def __init__(self, iterations: int = 100, initial_alpha: float = 1.0):
        super().__init__()
        self.iterations = int(iterations)
        self.alpha = nn.Parameter(torch.tensor(float(initial_alpha)))

    def forward(self, scores: torch.Tensor, row_mask: torch.Tensor | None = None, col_mask: torch.Tensor | None = None):
        b, m, n = scores.shape
        if row_mask is None:
            row_mask = torch.ones(b, m, dtype=torch.bool, device=scores.device)
        if col_mask is None:
            col_mask = torch.ones(b, n, dtype=torch.bool, device=scores.device)
        padded = torch.cat([scores, self.alpha.expand(b, m, 1).to(scores.dtype)], dim=2)
        padded = torch.cat([padded, self.alpha.expand(b, 1, n + 1).to(scores.dtype)], dim=1)
        neg_inf = torch.finfo(scores.dtype).min / 4
        pad_row = torch.cat([row_mask, torch.ones(b, 1, dtype=torch.bool, device=scores.device)], 1)
        pad_col = torch.cat([col_mask, torch.ones(b, 1, dtype=torch.bool, device=scores.device)], 1)
        valid = pad_row.unsqueeze(2) & pad_col.unsqueeze(1)
        padded = torch.where(valid, padded, torch.full_like(padded, neg_inf))
        num_rows = row_mask.sum(1).to(scores.dtype)
        num_cols = col_mask.sum(1).to(scores.dtype)
        norm = -torch.log(num_rows + num_cols)                     # (B,)
        log_mu = torch.where(pad_row, norm.unsqueeze(1).expand(b, m + 1), torch.full_like(pad_row, neg_inf, dtype=scores.dtype))
        log_nu = torch.where(pad_col, norm.unsqueeze(1).expand(b, n + 1), torch.full_like(pad_col, neg_inf, dtype=scores.dtype))
        log_mu[:, -1] = torch.log(num_cols) + norm
        log_nu[:, -1] = torch.log(num_rows) + norm
        plan = log_sinkhorn(padded, log_mu, log_nu, self.iterations)
        return plan - norm.view(b, 1, 1)
