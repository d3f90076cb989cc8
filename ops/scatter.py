"""Segment (scatter) reductions on plain PyTorch built-ins: differentiable and ONNX-exportable.

Every op reduces the rows of `src (N, ...)` into `num_segments` output rows by `index (N,)`
(int64, values in `[0, num_segments)`); the trailing dimensions are reduced independently.
Only `scatter_add` / `scatter_reduce` (ONNX `ScatterElements` with a reduction) are used, so
`torch.onnx.export(..., dynamo=True)` works for all of them.

- `segment_sum`, `segment_mean` (mean of an empty segment is 0), `segment_max` (empty segment -> 0),
- `segment_argmax` -> int64 row index into `src` of the maximum (ties: the smallest row; empty -> -1),
- `segment_softmax` -> softmax of `src` within each segment, shape of `src`.

Gradients: sum / mean / softmax are exact; `segment_max` follows `scatter_reduce("amax")`
(the gradient goes to the maximising row, split evenly between exact ties).
"""
from __future__ import annotations

import torch

__all__ = ["segment_count", "segment_sum", "segment_mean", "segment_max", "segment_argmax", "segment_softmax"]


def _is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _check(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> None:
    if not isinstance(src, torch.Tensor):
        raise TypeError(f"src: expected a torch.Tensor, got {type(src).__name__}")
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"index: expected a torch.Tensor, got {type(index).__name__}")
    if src.ndim < 1:
        raise ValueError(f"src: expected shape (N, ...), got a scalar")
    if index.ndim != 1 or index.shape[0] != src.shape[0]:
        raise ValueError(f"index: expected shape ({src.shape[0]},) to match src rows, got {tuple(index.shape)}")
    if index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"index: expected an int64 tensor, got {index.dtype}")
    if _is_tracing():
        return
    if isinstance(num_segments, bool) or not isinstance(num_segments, int) or num_segments < 0:
        raise ValueError(f"num_segments: expected an int >= 0, got {num_segments!r}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_segments):
        raise ValueError(
            f"index: values must be in [0, num_segments={num_segments}), got "
            f"[{int(index.min())}, {int(index.max())}]"
        )


def _expand_index(index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """(N,) -> src's shape, as scatter_* wants an index per element."""
    return index.long().view((-1,) + (1,) * (src.ndim - 1)).expand_as(src)


def segment_sum(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum of the rows of each segment: (N, ...) -> (num_segments, ...)."""
    _check(src, index, num_segments)
    out = src.new_zeros((num_segments,) + tuple(src.shape[1:]))
    return out.scatter_add(0, _expand_index(index, src), src)


def segment_count(index: torch.Tensor, num_segments: int, dtype=torch.float32) -> torch.Tensor:
    """Rows per segment: (num_segments,) in `dtype` (exportable, unlike torch.bincount)."""
    _check(index, index, num_segments)
    ones = torch.ones(index.shape[0], dtype=dtype, device=index.device)
    return torch.zeros(num_segments, dtype=dtype, device=index.device).scatter_add(0, index.long(), ones)


def segment_mean(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of the rows of each segment (0 for an empty segment): (N, ...) -> (num_segments, ...)."""
    total = segment_sum(src, index, num_segments)
    count = segment_count(index, num_segments, src.dtype).clamp(min=1)
    return total / count.view((-1,) + (1,) * (src.ndim - 1))


def _scatter_max(src: torch.Tensor, full_index: torch.Tensor, num_segments: int) -> torch.Tensor:
    out = src.new_zeros((num_segments,) + tuple(src.shape[1:]))
    # include_self=False: the zero fill only survives where no row was scattered (empty segments).
    return out.scatter_reduce(0, full_index, src, reduce="amax", include_self=False)


class _SegmentMax(torch.autograd.Function):
    """`scatter_reduce("amax")` with the same gradient rule, computed with one gather and two scatter_adds:
    torch's own CPU backward for amax is several times slower and was a quarter of a detector's
    training step (dynamic pillar VFE)."""

    @staticmethod
    def forward(ctx, src, full_index, num_segments):
        out = _scatter_max(src, full_index, num_segments)
        ctx.save_for_backward(src, full_index, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        src, full_index, out = ctx.saved_tensors
        is_max = (src == out.gather(0, full_index)).to(grad_out.dtype)
        ties = torch.zeros_like(out, dtype=grad_out.dtype).scatter_add_(0, full_index, is_max)
        grad_src = grad_out.gather(0, full_index) * is_max / ties.gather(0, full_index).clamp(min=1)
        return grad_src, None, None


def segment_max(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Element-wise maximum over the rows of each segment (0 for an empty segment)."""
    _check(src, index, num_segments)
    full_index = _expand_index(index, src)
    if src.requires_grad and torch.is_grad_enabled() and not _is_tracing():
        return _SegmentMax.apply(src, full_index, num_segments)
    return _scatter_max(src, full_index, num_segments)


def segment_argmax(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Row of `src` holding each segment's maximum, per element: int64 (num_segments, ...).

    Ties go to the smallest row; empty segments give -1. Not differentiable (integer output).
    """
    _check(src, index, num_segments)
    src = src.detach()
    seg_max = segment_max(src, index, num_segments)
    full_index = _expand_index(index, src)
    rows = torch.arange(src.shape[0], device=src.device).view((-1,) + (1,) * (src.ndim - 1)).expand_as(src)
    sentinel = src.shape[0]
    is_max = src == seg_max.gather(0, full_index)
    candidate = torch.where(is_max, rows, torch.full_like(rows, sentinel))
    out = torch.full((num_segments,) + tuple(src.shape[1:]), sentinel, dtype=torch.int64, device=src.device)
    out = out.scatter_reduce(0, full_index, candidate, reduce="amin", include_self=True)
    return torch.where(out == sentinel, torch.full_like(out, -1), out)


def segment_softmax(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax over the rows of each segment, independently per trailing element: same shape as src.

    The per-segment maximum is subtracted first (detached: softmax is shift-invariant, so the
    gradient is unchanged) so large logits do not overflow.
    """
    _check(src, index, num_segments)
    seg_max = segment_max(src.detach(), index, num_segments)
    full_index = _expand_index(index, src)
    shifted = torch.exp(src - seg_max.gather(0, full_index))
    denom = segment_sum(shifted, index, num_segments).gather(0, full_index)
    return shifted / denom
