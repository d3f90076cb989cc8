"""Every detector config on the device under test against the CPU, on the real KITTI scan.

Tolerances (fp32, TF32 off): head outputs and loss parts within rtol 1e-3 (atol 1e-3 x the output's scale);
each parameter's gradient within 2e-2 relative L2 error; decoded boxes (eval) the same count, matched within 1e-3
(headings 1e-2). The spconv configs run on spconv-triton on a GPU without spconv, and spconv-triton has no CPU path:
those compare against the spconv CPU results stored in fixtures/ (test_gpu_spconv.py) and are skipped here.
Also: AMP training steps (bf16, fp16) stay finite and lower the loss; targets built on the device equal the CPU's;
decoding stays on the device; ONNX export from a model on the device matches onnxruntime on the CPU.
"""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.config import load_config
from pc3d.models.detector import Detector

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = sorted((REPO / "configs" / "synthetic").glob("*_tiny.yaml"))
WAYMO = sorted((REPO / "configs" / "waymo").glob("*.yaml"))
NUSCENES = sorted((REPO / "configs" / "nuscenes").glob("*.yaml"))
ALL = SYNTHETIC + WAYMO + NUSCENES
IDS = [f"{p.parent.name}/{p.stem}" for p in ALL]
RTOL, GRAD_RTOL, BOX_TOL, HEADING_TOL = 1e-3, 2e-2, 1e-3, 1e-2


def uses_spconv(cfg) -> bool:
    return cfg["model"].get("backbone_3d", {}).get("type") == "spconv_resnet"


def config(path, helpers):
    cfg = load_config(path)
    return cfg if path.parent.name == "synthetic" else helpers.tiny_widths(cfg)


def require_sparse_conv(cfg):
    """The spconv configs need spconv or spconv-triton; without either they skip, naming the import error."""
    if uses_spconv(cfg):
        try:
            from pc3d.models import sparse_conv  # noqa: F401
        except ImportError as err:
            pytest.skip(f"no sparse-convolution library for the spconv backbone: {err}")


def skip_if_no_cpu_reference(cfg, device):
    require_sparse_conv(cfg)
    if uses_spconv(cfg) and device.type == "cuda":
        from pc3d.models import sparse_conv
        if sparse_conv.BACKEND != "spconv":
            pytest.skip(f"spconv backbone on {sparse_conv.BACKEND}, which has no CPU path: compared against the "
                        "stored spconv CPU fixture in test_gpu_spconv.py")


def build(cfg, helpers, seed=0):
    torch.manual_seed(seed)
    return helpers.zero_dropout(helpers.seeded_weights(Detector.from_config(cfg), seed))


def train_pass(model, batch, device, helpers):
    """One train-mode forward + backward on `device` with the device's op paths (torch paths also in a CPU dry run,
    conftest.device_paths): (head tensors, loss parts, grads by name), on the CPU."""
    with helpers.device_paths(device):
        return _train_pass(model, batch, device)


def _train_pass(model, batch, device):
    model = copy.deepcopy(model).to(device).train()
    batch = batch.to(device)
    voxelized = model.voxelize(batch)
    predictions = model.forward_voxels(voxelized)
    parts = model.head.loss(predictions, batch.gt_boxes)
    sum(parts.values()).backward()
    tensors = [t.detach().float().cpu() for p in predictions for t in p.tensors()]
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return tensors, {k: float(v.detach()) for k, v in parts.items()}, grads


def assert_close_outputs(got, want):
    for a, b in zip(got, want):
        scale = float(b.abs().max()) + 1e-6
        torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL * scale)


def assert_same_boxes(got, want):
    assert len(got) == len(want)
    for x, y in zip(got, want):
        assert len(x) == len(y), (len(x), len(y))
        if len(x) == 0:
            continue
        other = [c for c in range(x.boxes.shape[1]) if c != 6]
        rx = torch.cat([x.boxes[:, other], x.scores[:, None]], 1).double().cpu()
        ry = torch.cat([y.boxes[:, other], y.scores[:, None]], 1).double().cpu()
        diff = (rx[:, None] - ry[None]).abs().amax(-1)
        diff = torch.where(x.labels.cpu()[:, None] == y.labels.cpu()[None], diff, torch.full_like(diff, float("inf")))
        assert float(diff.amin(1).max()) <= BOX_TOL and float(diff.amin(0).max()) <= BOX_TOL
        turn = x.boxes[:, 6].double().cpu()[:, None] - y.boxes[:, 6].double().cpu()[None]
        heading = (torch.remainder(turn + torch.pi, 2 * torch.pi) - torch.pi).abs()
        assert float(heading[torch.arange(len(x)), diff.argmin(1)].max()) <= HEADING_TOL


@pytest.mark.parametrize("path", ALL, ids=IDS)
def test_forward_backward_device_matches_cpu(path, device, helpers, kitti_scan):
    cfg = config(path, helpers)
    skip_if_no_cpu_reference(cfg, device)
    model = build(cfg, helpers)
    batch = helpers.scan_batch(kitti_scan, cfg)
    got_out, got_loss, got_grads = train_pass(model, batch, device, helpers)
    want_out, want_loss, want_grads = _train_pass(model, batch, torch.device("cpu"))
    assert_close_outputs(got_out, want_out)
    assert got_loss.keys() == want_loss.keys()
    for key in want_loss:
        assert got_loss[key] == pytest.approx(want_loss[key], rel=RTOL, abs=1e-5), key
    assert got_grads.keys() == want_grads.keys() and len(want_grads) > 10
    for name, want in want_grads.items():
        err = float((got_grads[name] - want).norm()) / (float(want.norm()) + 1e-8)
        assert err <= GRAD_RTOL, (name, err)
    # eval: the same boxes, decoded on the device
    model.eval()
    with torch.no_grad():
        want_boxes = model.predict(batch)
        on_device = copy.deepcopy(model).to(device)
        with helpers.device_paths(device):
            got_boxes = on_device.predict(batch.to(device))
    assert all(b.boxes.device.type == device.type for b in got_boxes)
    assert_same_boxes(got_boxes, want_boxes)


def amp_losses(model, batch, device, dtype, steps=8):
    """AdamW steps on one batch under autocast (+ GradScaler for fp16, as pc3d's Trainer does)."""
    model = copy.deepcopy(model).to(device).train()
    batch = batch.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 10, enabled=dtype == torch.float16)
    losses = []
    for _ in range(steps):
        with torch.autocast(device.type, dtype=dtype):
            total = model(batch).total
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(total.detach()))
    return losses


AMP_CONFIGS = SYNTHETIC + WAYMO


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("path", AMP_CONFIGS, ids=[f"{p.parent.name}/{p.stem}" for p in AMP_CONFIGS])
def test_amp_training_steps_are_finite_and_lower_the_loss(path, dtype, device, helpers, kitti_scan):
    # DSVT's users report NaN losses under fp16 (DSVT issues #31, #80): every step must stay finite here.
    cfg = config(path, helpers)
    require_sparse_conv(cfg)
    if uses_spconv(cfg) and device.type == "cpu":
        pytest.skip("spconv's CPU kernels run float32 only (no bf16 / fp16; dry run on the CPU: the GPU run uses "
                    "spconv-triton)")
    batch = helpers.scan_batch(kitti_scan, cfg)
    torch.manual_seed(0)
    model = Detector.from_config(cfg)  # the configs' own initialisation, as training starts
    with helpers.device_paths(device):
        losses = amp_losses(model, batch, device, dtype)
    assert all(np.isfinite(losses)), losses
    assert min(losses[-3:]) < losses[0], losses


def test_targets_built_on_the_device_equal_the_cpu(device):
    from pc3d.models.heads.targets import BoxCoder, MapGeometry, assign_targets
    from pc3d.structures import Boxes3D

    rng = np.random.default_rng(0)
    names = ("Vehicle", "Pedestrian", "Cyclist")
    geom = MapGeometry((0.32, 0.32, 6.0), (-74.88, -74.88, -2.0, 74.88, 74.88, 4.0), 1, (468, 468))
    gts = []
    for num in (80, 0, 35):
        boxes = np.column_stack([rng.uniform(-75, 75, (num, 2)), rng.uniform(-1, 1, num), rng.uniform(0.3, 12, (num, 3)),
                                 rng.uniform(-np.pi, np.pi, num), rng.normal(0, 4, (num, 2))]).astype(np.float32)
        gts.append(Boxes3D(torch.from_numpy(boxes), torch.from_numpy(rng.integers(0, 3, num)), names))
    for coder in (BoxCoder(False), BoxCoder(True)):
        want = assign_targets(gts, [[0], [1, 2]], geom, coder, max_objs=60)
        got = assign_targets([g.to(device) for g in gts], [[0], [1, 2]], geom, coder, max_objs=60)
        for g, w in zip(got, want):
            assert g.heatmap.device.type == device.type
            for name in ("heatmap", "index", "mask", "boxes"):
                assert torch.equal(getattr(g, name).cpu(), getattr(w, name)), name
            # float64 sin / cos / log of two libraries, rounded to float32: equal or one float32 ulp apart
            torch.testing.assert_close(g.codes.cpu(), w.codes, rtol=2 ** -23, atol=1e-7)


def test_onnx_export_from_a_model_on_the_device(device, helpers, kitti_scan, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from pc3d.deploy import OnnxDetector, export_onnx

    cfg = load_config(REPO / "configs/synthetic/flatformer_tiny.yaml")
    model = build(cfg, helpers).eval().to(device)
    with helpers.device_paths(device):
        result = export_onnx(model, cfg, tmp_path / "flatformer_tiny.onnx")
    assert next(model.parameters()).device.type == device.type  # the export does not move the model
    onnx_detector = OnnxDetector(result.path, intra_op_threads=2)
    batch = helpers.scan_batch(kitti_scan[:30000], cfg)
    with torch.no_grad(), helpers.device_paths(device):
        want = [t.float().cpu() for p in model.forward_voxels(model.voxelize(batch.to(device))) for t in p.tensors()]
    got = [t for p in onnx_detector.forward_raw(batch) for t in p.tensors()]
    assert len(got) == len(want)
    assert_close_outputs(got, want)
