"""Backbone-level ONNX export checks for the two backbones whose graphs had deployment defects:

- ScatterFormer: its window sums used `index_add`, exported as `ScatterND(reduction="add")`, which onnxruntime
  runs multi-threaded without guarding duplicate indices (random lost updates); now `segment_sum`
  (ScatterElements, serial) -> the graph has no reducing ScatterND and agrees with torch with 2 threads.
- SST: a Python branch on the (data-dependent) window count per level and a boolean-mask index_put kept it
  from exporting; now every level runs (also empty ones) and outputs return by one gather.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pc3d.deploy.onnx_export import reducing_scatternd
from pc3d.models.backbones_3d import build_backbone_3d
from pc3d.structures import SparseVoxels

SHAPE = (1, 48, 48)


def _coords(num, seed, clustered=False):
    """`num` distinct pillars (batch 0, z 0) on the 48x48 grid; `clustered` packs them into a corner so some
    12x12 windows are full (SST's largest level, drops with small budgets)."""
    g = torch.Generator().manual_seed(seed)
    side = 32 if clustered else SHAPE[1]
    lin = torch.randperm(side * side, generator=g)[:num]
    y, x = lin // side, lin % side
    return torch.stack([torch.zeros_like(lin), torch.zeros_like(lin), y, x], 1).int()


class _Features(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, feats, coords):
        return self.backbone(SparseVoxels(feats, coords, SHAPE, 1)).features


def _export(backbone, example):
    """As `export_onnx` does: searchsorted swapped for its exportable form, segment ops left as ScatterElements."""
    from pc3d.deploy.onnx_export import _ExportAdaptors

    num = torch.export.Dim("num_voxels")
    with torch.no_grad(), _ExportAdaptors(scatternd=False):
        program = torch.onnx.export(_Features(backbone).eval(), example, dynamo=True, verbose=False,
                                    dynamic_shapes={"feats": {0: num}, "coords": {0: num}})
    return program.model_proto


def _session(model, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options)


def _run(session, feats, coords):
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {names[0]: feats.numpy(), names[1]: coords.numpy()})[0]


def test_scatterformer_graph_has_no_racy_scatter_and_matches_torch_with_two_threads():
    torch.manual_seed(0)
    backbone = build_backbone_3d(dict(type="ScatterFormer", in_channels=4, dim=16, num_layers=2, num_heads=2,
                                      kernel_size=5)).eval()
    example = (torch.randn(700, 4), _coords(700, 0, clustered=True))
    model = _export(backbone, example)
    ops = [n.op_type for n in model.graph.node]
    assert "ScatterElements" in ops  # the window sums
    assert reducing_scatternd(model) == []
    session = _session(model, threads=2)
    for feats, coords in (example, (torch.randn(1100, 4), _coords(1100, 3))):
        with torch.no_grad():
            want = _Features(backbone)(feats, coords).numpy()
        for _ in range(4):  # the old ScatterND graph differed from run to run with 2 threads
            np.testing.assert_allclose(_run(session, feats, coords), want, rtol=0, atol=1e-5)


def test_reducing_scatternd_finds_index_add():
    """The export-time guard: an `index_add` becomes a reducing ScatterND, and such a layout is run single-threaded."""
    from pc3d.deploy.onnx_runtime import requires_single_thread

    class IndexAdd(torch.nn.Module):
        def forward(self, src, index, anchor):
            return torch.zeros(anchor.shape[0], src.shape[1]).index_add(0, index, src)

    n, s = torch.export.Dim("n"), torch.export.Dim("s")
    program = torch.onnx.export(IndexAdd(), (torch.randn(50, 3), torch.randint(0, 9, (50,)), torch.zeros(9)),
                                dynamo=True, verbose=False, dynamic_shapes=({0: n}, {0: n}, {0: s}))
    assert len(reducing_scatternd(program.model_proto)) == 1
    assert requires_single_thread({"scatter": "elements", "scatternd_reductions": 1})
    assert requires_single_thread({"scatter": "scatternd", "scatternd_reductions": 0})
    assert not requires_single_thread({"scatter": "elements", "scatternd_reductions": 0})
    assert not requires_single_thread({"scatter": "elements"})  # files exported before the count existed


def test_sst_backbone_exports_with_empty_levels_and_drops():
    from pc3d.ops.partition.sst_regions import sst_region_groups

    torch.manual_seed(0)
    levels = ((8, 0, 8), (16, 8, 24), (24, 24, 1 << 40))  # small budgets: a full 12x12 window drops voxels
    backbone = build_backbone_3d(dict(type="SST", in_channels=4, dim=16, num_layers=2, num_heads=2,
                                      dim_feedforward=32, drop_levels=levels)).eval()
    example = (torch.randn(500, 4), _coords(500, 0, clustered=True))
    model = _export(backbone, example)
    assert reducing_scatternd(model) == []
    session = _session(model, threads=2)
    cases = [example, (torch.randn(150, 4), _coords(150, 1)), (torch.randn(6, 4), _coords(6, 2))]
    level_sizes = []
    for feats, coords in cases:
        regions = sst_region_groups(coords, SHAPE, backbone.window_shape, (0, 0, 0), levels)
        level_sizes.append([int(level.voxel_index.shape[0]) for level in regions.levels])
        with torch.no_grad():
            want = _Features(backbone)(feats, coords).numpy()
        np.testing.assert_allclose(_run(session, feats, coords), want, rtol=0, atol=1e-5)
    # the cases really cover: drops in the trace example, an empty level, only the first level
    regions = sst_region_groups(example[1], SHAPE, backbone.window_shape, (0, 0, 0), levels)
    assert not bool(regions.keep_mask.all())
    assert any(0 in sizes for sizes in level_sizes)
    assert level_sizes[2][1:] == [0, 0]


def test_sst_slot_of_voxel_points_at_each_kept_voxels_own_slot():
    from pc3d.ops.partition.sst_regions import flat_slots, sst_region_groups

    coords = _coords(400, 5, clustered=True)
    regions = sst_region_groups(coords, SHAPE, (12, 12, 1), (6, 6, 0), ((10, 0, 10), (20, 10, 40)))
    # slot contents = the voxel row stored in that slot; padding slots -> -1
    per_level = [torch.where(level.key_padding_mask, -1, level.voxel_index)[..., None] for level in regions.levels]
    back = flat_slots(per_level)[regions.slot_of_voxel, 0]
    rows = torch.arange(coords.shape[0])
    assert torch.equal(back[regions.keep_mask], rows[regions.keep_mask])
    assert torch.equal(regions.slot_of_voxel[~regions.keep_mask], torch.zeros_like(rows[~regions.keep_mask]))
    assert (~regions.keep_mask).any() and regions.keep_mask.any()
