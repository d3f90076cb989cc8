"""Row scatters exported as ONNX `ScatterND` (used while exporting only; see `onnx_export._ExportAdaptors`).

`pc3d.ops.scatter.segment_sum / segment_max` use `scatter_add / scatter_reduce` with the row index expanded to
`(N, C)`; the exporter turns them into ONNX `ScatterElements` with an `(N, C)` int64 index. onnxruntime's CPU
`ScatterElements` with a reduction is an element-by-element serial loop: for the VFE's 120k points x 32
channels it took 42 ms per call, while `ScatterND` with `(N, 1)` row indices does the same max in 0.9 ms
(measured on the dev machine, 1 thread). ScatterElements was ~45% of the whole detector's onnxruntime time.

**Only correct single-threaded**: onnxruntime (1.31.1, this machine) parallelises ScatterND over the update rows
without guarding duplicate indices, so with 2 intra-op threads a (120k x 32) add lost updates (max error 55.8
vs 8e-5 single-threaded). Exports using these ops record `"scatter": "scatternd"` in their layout and
`OnnxDetector` runs them with one intra-op thread.

The two custom ops below compute exactly `data.scatter_reduce(0, index[:, None].expand_as(src), src, reduce,
include_self=True)` in torch and are translated to a single `ScatterND(reduction=add|max)` in ONNX.
"""
from __future__ import annotations

import torch


@torch.library.custom_op("pc3d_deploy::scatter_rows_add", mutates_args=())
def scatter_rows_add(data: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """`data` (S, ...) + the rows of `src` (N, ...) summed into rows `index` (N,) int64."""
    return data.index_add(0, index, src)


@scatter_rows_add.register_fake
def _(data, index, src):
    return torch.empty_like(data)


@torch.library.custom_op("pc3d_deploy::scatter_rows_max", mutates_args=())
def scatter_rows_max(data: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Element-wise max of `data` (S, ...) and the rows of `src` (N, ...) scattered to rows `index` (N,)."""
    full_index = index.view((-1,) + (1,) * (src.ndim - 1)).expand_as(src)
    return data.scatter_reduce(0, full_index, src, reduce="amax", include_self=True)


@scatter_rows_max.register_fake
def _(data, index, src):
    return torch.empty_like(data)


def _translations():
    """`{op overload: onnxscript function}` for `torch.onnx.export(custom_translation_table=...)`."""
    from onnxscript import opset18 as op

    def rows_add(data, index, src):
        return op.ScatterND(data, op.Unsqueeze(index, op.Constant(value_ints=[1])), src, reduction="add")

    def rows_max(data, index, src):
        return op.ScatterND(data, op.Unsqueeze(index, op.Constant(value_ints=[1])), src, reduction="max")

    return {torch.ops.pc3d_deploy.scatter_rows_add.default: rows_add,
            torch.ops.pc3d_deploy.scatter_rows_max.default: rows_max}


def segment_sum_rows(src: torch.Tensor, index: torch.Tensor, num_segments) -> torch.Tensor:
    """`pc3d.ops.scatter.segment_sum` through `scatter_rows_add` (one ScatterND in ONNX)."""
    out = src.new_zeros((num_segments,) + tuple(src.shape[1:]))
    return scatter_rows_add(out, index.long(), src)


def segment_max_rows(src: torch.Tensor, index: torch.Tensor, num_segments) -> torch.Tensor:
    """`pc3d.ops.scatter.segment_max` (empty segment -> 0, finite inputs) through `scatter_rows_max`."""
    out = src.new_full((num_segments,) + tuple(src.shape[1:]), float("-inf"))
    out = scatter_rows_max(out, index.long(), src)
    return torch.where(torch.isneginf(out), torch.zeros_like(out), out)


custom_translation_table = _translations
