"""pc3d.ops.scatter against per-segment loops, gradcheck in double, and an ONNX round trip."""
import numpy as np
import pytest
import torch

from pc3d.ops.scatter import segment_argmax, segment_max, segment_mean, segment_softmax, segment_sum


def loop_reference(src, index, num_segments, fn, empty):
    out = []
    for s in range(num_segments):
        rows = src[index == s]
        out.append(fn(rows) if rows.shape[0] else torch.full(src.shape[1:], empty, dtype=rows.dtype))
    return torch.stack(out)


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(0)
    src = torch.randn(200, 6, generator=generator)
    index = torch.randint(0, 30, (200,), generator=generator)
    index[index == 7] = 8  # segment 7 is empty
    return src, index, 31  # segment 30 is empty too


def test_values_match_loops(data):
    src, index, n = data
    torch.testing.assert_close(segment_sum(src, index, n), loop_reference(src, index, n, lambda r: r.sum(0), 0.0))
    torch.testing.assert_close(segment_mean(src, index, n), loop_reference(src, index, n, lambda r: r.mean(0), 0.0))
    torch.testing.assert_close(segment_max(src, index, n), loop_reference(src, index, n, lambda r: r.max(0).values, 0.0))
    argmax = segment_argmax(src, index, n)
    for s in range(n):
        rows = torch.nonzero(index == s).reshape(-1)
        if rows.numel() == 0:
            assert torch.all(argmax[s] == -1)
        else:
            assert torch.equal(argmax[s], rows[src[rows].argmax(0)])
    soft = segment_softmax(src, index, n)
    for s in range(n):
        rows = index == s
        if rows.any():
            torch.testing.assert_close(soft[rows], torch.softmax(src[rows], dim=0))


def test_negative_values_and_empty_segments_give_zero():
    src = torch.tensor([[-3.0], [-1.0], [-2.0]])
    index = torch.tensor([0, 0, 2])
    assert segment_max(src, index, 3).reshape(-1).tolist() == [-1.0, 0.0, -2.0]
    assert segment_mean(src, index, 3).reshape(-1).tolist() == [-2.0, 0.0, -2.0]
    assert segment_argmax(src, index, 3).reshape(-1).tolist() == [1, -1, 2]


def test_argmax_ties_take_first_row_and_softmax_is_stable():
    src = torch.tensor([1.0, 5.0, 5.0, 2.0])
    index = torch.tensor([0, 0, 0, 1])
    assert segment_argmax(src, index, 2).tolist() == [1, 3]
    big = torch.tensor([1000.0, 1000.0, -1000.0])
    out = segment_softmax(big, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(out, torch.tensor([0.5, 0.5, 1.0]))


def test_gradcheck_double():
    generator = torch.Generator().manual_seed(1)
    src = torch.randn(12, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    index = torch.tensor([0, 1, 1, 2, 2, 2, 0, 4, 4, 1, 0, 2])  # segment 3 empty
    for fn in (segment_sum, segment_mean, segment_max, segment_softmax):
        assert torch.autograd.gradcheck(lambda x: fn(x, index, 5), (src,)), fn.__name__
    vector = torch.randn(12, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: segment_softmax(x, index, 5), (vector,))


def test_segment_max_gradient_splits_ties_evenly():
    # Rows 0 and 2 tie at the maximum 0.0 of segment 0; segment 1 has a single row; segment 2 is empty.
    # (torch's own amax backward counts the zero fill of an empty-looking output as a third tie and
    # returns g/3 each; the gradient must sum to g over the segment.)
    src = torch.tensor([[0.0], [-1.7], [0.0], [2.5]], requires_grad=True)
    index = torch.tensor([0, 0, 0, 1])
    out = segment_max(src, index, 3)
    (grad,) = torch.autograd.grad(out, src, torch.tensor([[-1.2], [3.0], [5.0]]))
    assert grad[:, 0].tolist() == pytest.approx([-0.6, 0.0, -0.6, 3.0])


def test_bad_inputs():
    src = torch.randn(4, 2)
    with pytest.raises(ValueError, match="index"):
        segment_sum(src, torch.tensor([0, 1, 2]), 3)
    with pytest.raises(ValueError, match="index"):
        segment_sum(src, torch.tensor([0, 1, 2, 3]), 3)
    with pytest.raises(ValueError, match="index"):
        segment_max(src, torch.tensor([0.0, 1, 2, 0]), 3)
    with pytest.raises(ValueError, match="num_segments"):
        segment_mean(src, torch.tensor([0, 1, 2, 0]), -1)
    with pytest.raises(TypeError, match="src"):
        segment_softmax(np.zeros((4, 2)), torch.tensor([0, 1, 2, 0]), 3)


class _AllSegmentOps(torch.nn.Module):
    def forward(self, src, index):
        n = 6
        return (segment_sum(src, index, n), segment_mean(src, index, n), segment_max(src, index, n),
                segment_argmax(src, index, n), segment_softmax(src, index, n))


def test_onnx_export_matches_torch(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    generator = torch.Generator().manual_seed(2)
    src = torch.randn(40, 3, generator=generator)
    index = torch.randint(0, 5, (40,), generator=generator)  # segment 5 empty
    model = _AllSegmentOps().eval()
    path = tmp_path / "segments.onnx"
    torch.onnx.export(model, (src, index), str(path), dynamo=True,
                      dynamic_shapes={"src": {0: torch.export.Dim("n")}, "index": {0: torch.export.Dim("n")}})
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other_src = torch.randn(57, 3, generator=generator)  # a different N than traced
    other_index = torch.randint(0, 5, (57,), generator=generator)
    for s, i in ((src, index), (other_src, other_index)):
        feeds = {inp.name: value.numpy() for inp, value in zip(session.get_inputs(), (s, i))}
        outputs = session.run(None, feeds)
        for got, want in zip(outputs, model(s, i)):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
