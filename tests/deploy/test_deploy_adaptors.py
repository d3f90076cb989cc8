"""The export-time adaptors are exact replacements of what they stand in for."""
from __future__ import annotations

import pytest
import torch

from pc3d.deploy.onnx_export import _ExportAdaptors, searchsorted_by_sort
from pc3d.deploy.onnx_scatter import segment_max_rows, segment_sum_rows
from pc3d.ops import scatter


@pytest.mark.parametrize("seed", range(5))
def test_searchsorted_by_sort_equals_torch(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(40):
        n = int(torch.randint(1, 60, (1,), generator=g))
        boundaries = torch.sort(torch.randint(0, 25, (n,), generator=g)).values  # with duplicates
        values = torch.randint(-3, 28, (int(torch.randint(1, 9, (1,), generator=g)), 4), generator=g)
        for right in (False, True):
            expected = torch.searchsorted(boundaries, values, right=right)
            assert torch.equal(searchsorted_by_sort(boundaries, values, right=right), expected)
        assert searchsorted_by_sort(boundaries, values, out_int32=True).dtype == torch.int32


def test_row_scatters_equal_segment_ops():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(500, 7, generator=g) * 10 - 5      # negative maxima too: the -inf fill must not leak
    index = torch.randint(0, 80, (500,), generator=g)
    index[index == 3] = 4                                # segment 3 empty -> 0 like segment_max
    got = segment_max_rows(src, index, 90)
    assert torch.equal(got, scatter.segment_max(src, index, 90))
    assert torch.equal(got[3], torch.zeros(7)) and torch.equal(got[85:], torch.zeros(5, 7))
    torch.testing.assert_close(segment_sum_rows(src, index, 90), scatter.segment_sum(src, index, 90))
    one_d = segment_sum_rows(src[:, 0], index, 90)
    torch.testing.assert_close(one_d, scatter.segment_sum(src[:, 0], index, 90))


def test_row_scatters_export_as_scatternd(tmp_path):
    """The custom ops become one ScatterND each and onnxruntime reproduces the torch values."""
    import numpy as np
    import onnxruntime as ort

    from pc3d.deploy.onnx_scatter import custom_translation_table

    class Segments(torch.nn.Module):
        def forward(self, src, index, anchor):
            return segment_max_rows(src, index, anchor.shape[0]), segment_sum_rows(src, index, anchor.shape[0])

    g = torch.Generator().manual_seed(1)
    src, index, anchor = torch.randn(300, 5, generator=g), torch.randint(0, 40, (300,), generator=g), torch.zeros(40)
    n, s = torch.export.Dim("n"), torch.export.Dim("s")
    program = torch.onnx.export(Segments(), (src, index, anchor), dynamo=True, verbose=False,
                                dynamic_shapes=({0: n}, {0: n}, {0: s}), custom_translation_table=custom_translation_table())
    ops = [node.op_type for node in program.model_proto.graph.node]
    assert ops.count("ScatterND") == 2 and "ScatterElements" not in ops
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # onnxruntime's ScatterND reduction is not thread-safe (see onnx_scatter)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options)
    src2, index2 = torch.randn(900, 5, generator=g), torch.randint(0, 70, (900,), generator=g)  # other sizes
    got = session.run(None, {"src": src2.numpy(), "index": index2.numpy(), "anchor": np.zeros(70, np.float32)})
    np.testing.assert_array_equal(got[0], scatter.segment_max(src2, index2, 70).numpy())
    np.testing.assert_allclose(got[1], scatter.segment_sum(src2, index2, 70).numpy(), atol=1e-5)


def test_adaptors_are_restored():
    original_search, original_max, original_sum = torch.searchsorted, scatter.segment_max, scatter.segment_sum
    with pytest.raises(RuntimeError):
        with _ExportAdaptors():
            assert torch.searchsorted is searchsorted_by_sort
            assert scatter.segment_max is segment_max_rows and scatter.segment_sum is segment_sum_rows
            raise RuntimeError("export failed")
    assert torch.searchsorted is original_search and scatter.segment_max is original_max
    assert scatter.segment_sum is original_sum
