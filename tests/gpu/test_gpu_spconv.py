"""The spconv CenterPoint (configs/synthetic/centerpoint_voxel_tiny.yaml) against pc3d's CPU spconv results.

spconv has no wheel for the GPU machine's CUDA 13 and its CUDA 12 wheels are 98 MB; spconv-triton (pure Python,
Triton kernels, GPU only) is carried instead. It cannot run on the CPU, so the reference is stored:
`fixtures/spconv_centerpoint_cpu.npz` holds a cropped real KITTI scan, and what spconv 2.3.8 on the CPU computes on
it with numpy-seeded weights (`seeded_weights`, identical on any machine): the 3D backbone's sparse output, the
loss parts, per-channel sums of the head maps and every parameter's gradient norm (one train-mode pass).

`test_spconv_fixture_is_current` (not marked gpu: it runs in the default suite wherever spconv is installed) checks
the file against spconv on the CPU; `PC3D_WRITE_GPU_FIXTURES=1` rewrites it from ../shared/data's KITTI 000001.
"""
import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.config import load_config

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/synthetic/centerpoint_voxel_tiny.yaml"
FIXTURE = Path(__file__).parent / "fixtures" / "spconv_centerpoint_cpu.npz"
# spconv-triton accumulates fp32 GEMMs in another order than spconv's CPU gather-GEMM-scatter
FEATURE_RTOL, LOSS_RTOL, GRAD_RTOL = 1e-3, 1e-3, 1e-2


def _model(helpers):
    from pc3d.models.detector import Detector
    return helpers.zero_dropout(helpers.seeded_weights(Detector.from_config(load_config(CONFIG)), 0))


def fingerprint(model, batch, device) -> dict:
    """One train-mode forward + backward of `model` on `device` -> numpy arrays (CPU)."""
    model = copy.deepcopy(model).to(device).train()
    batch = batch.to(device)
    captured = {}
    handle = model.backbone_3d.register_forward_hook(lambda module, args, out: captured.update(out=out))
    try:
        voxelized = model.voxelize(batch)
        predictions = model.forward_voxels(voxelized)
    finally:
        handle.remove()
    parts = model.head.loss(predictions, batch.gt_boxes)
    sum(parts.values()).backward()
    out = captured["out"]
    indices = out.coords.long().cpu().numpy()
    order = np.lexsort(indices.T[::-1])  # spconv and spconv-triton may emit output sites in another order
    maps = [t.detach().float().cpu() for p in predictions for t in p.tensors()]
    names = sorted(n for n, p in model.named_parameters() if p.grad is not None)
    grads = dict(model.named_parameters())
    return {
        "backbone_indices": indices[order].astype(np.int32),
        "backbone_features": out.features.detach().float().cpu().numpy()[order],
        "loss_names": np.array(sorted(parts)), "losses": np.array([float(parts[k].detach()) for k in sorted(parts)]),
        "head_sums": np.concatenate([m.sum(dim=(0, 2, 3)).numpy() for m in maps]),
        "head_abs_sums": np.concatenate([m.abs().sum(dim=(0, 2, 3)).numpy() for m in maps]),
        "grad_names": np.array(names), "grad_norms": np.array([float(grads[n].grad.norm()) for n in names]),
    }


def _batch(helpers, points, boxes):
    from pc3d.structures import Boxes3D, Frame, PointCloud, collate
    cfg = load_config(CONFIG)
    gt = Boxes3D(torch.from_numpy(boxes[:, :7]), torch.from_numpy(boxes[:, 7].astype(np.int64)),
                 tuple(cfg["dataset"]["class_names"]))
    return collate([Frame(PointCloud(points, tuple(cfg["dataset"]["point_features"])), gt, "fixture")])


def _crop(scan: np.ndarray) -> np.ndarray:
    """Points within 25 m (x, y), every eighth one: ~13k points, enough for every stage of the backbone."""
    keep = (np.abs(scan[:, 0]) < 25) & (np.abs(scan[:, 1]) < 25)
    return np.ascontiguousarray(scan[keep][::8])


BOXES = np.array([[10.0, 3.0, -0.8, 4.2, 1.8, 1.5, 0.2, 0], [6.0, -4.0, -0.9, 0.8, 0.7, 1.7, 1.0, 2]], np.float32)


def compare(got: dict, want: dict) -> None:
    assert np.array_equal(got["backbone_indices"], want["backbone_indices"])
    scale = np.abs(want["backbone_features"]).max()
    np.testing.assert_allclose(got["backbone_features"], want["backbone_features"], rtol=FEATURE_RTOL,
                               atol=FEATURE_RTOL * scale)
    assert list(got["loss_names"]) == list(want["loss_names"])
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(got["head_sums"], want["head_sums"], rtol=FEATURE_RTOL,
                               atol=FEATURE_RTOL * np.abs(want["head_abs_sums"]).max())
    np.testing.assert_allclose(got["head_abs_sums"], want["head_abs_sums"], rtol=FEATURE_RTOL)
    assert list(got["grad_names"]) == list(want["grad_names"])
    np.testing.assert_allclose(got["grad_norms"], want["grad_norms"], rtol=GRAD_RTOL, atol=1e-6)


def test_spconv_fixture_is_current(helpers, request):
    """Default suite: spconv on the CPU reproduces the stored reference (or rewrites it on request)."""
    pytest.importorskip("spconv.pytorch", reason="spconv is not installed")
    from pc3d.models import sparse_conv
    if sparse_conv.BACKEND != "spconv":
        pytest.skip(f"PC3D_SPCONV selects {sparse_conv.BACKEND}, not spconv")
    model = _model(helpers)
    if os.environ.get("PC3D_WRITE_GPU_FIXTURES") == "1":
        scan = request.getfixturevalue("kitti_scan")
        points = _crop(scan)
        result = fingerprint(model, _batch(helpers, points, BOXES), torch.device("cpu"))
        import spconv
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(FIXTURE, points=points, boxes=BOXES, **result,
                            source=np.array(f"KITTI object training velodyne 000001.bin (../shared/data), |x|,|y| < 25 m, "
                                            f"every 8th point; spconv {spconv.__version__} CPU, torch {torch.__version__}"))
    stored = dict(np.load(FIXTURE))
    got = fingerprint(model, _batch(helpers, stored["points"], stored["boxes"]), torch.device("cpu"))
    compare(got, stored)
    assert len(stored["backbone_features"]) > 100 and len(stored["points"]) > 5000


@pytest.mark.gpu
def test_spconv_centerpoint_on_the_device_matches_the_cpu_fixture(device, helpers):
    try:
        from pc3d.models import sparse_conv
    except ImportError as err:
        pytest.skip(f"no sparse-convolution library for the CenterPoint rows: {err}")
    if device.type == "cpu" and sparse_conv.BACKEND != "spconv":
        pytest.skip(f"{sparse_conv.BACKEND} has no CPU path")
    stored = dict(np.load(FIXTURE))
    got = fingerprint(_model(helpers), _batch(helpers, stored["points"], stored["boxes"]), device)
    compare(got, stored)
