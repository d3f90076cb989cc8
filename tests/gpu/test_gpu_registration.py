"""RoITr on the device under test against the CPU (the shipped checkpoint).

The GPU machine has no Open3D, which pc3d uses for normals and ICP, so the network's inputs are stored:
`fixtures/roitr_inputs.npz` holds the real 3DMatch fragment pair's (../shared/data/3dmatch/fragments/predator_demo)
2048 FPS points and Open3D normals as `prepare_cloud` makes them on the CPU. `PC3D_WRITE_GPU_FIXTURES=1` with
`test_roitr_inputs_fixture_is_current` (slow suite, needs Open3D and the data) rewrites it.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "checkpoints/roitr_synthetic_tiny.pth"
FIXTURE = Path(__file__).parent / "fixtures" / "roitr_inputs.npz"
PAIR = "3dmatch/fragments/predator_demo/cloud_bin_{}.pth"
FEATURE_TOL = 1e-3


def _load_fragment(shared_data, index):
    from pc3d.io.points import read_points
    return np.asarray(read_points(shared_data / PAIR.format(index)))[:, :3]


def _prepared(shared_data):
    from pc3d.models.registration.roitr import load_checkpoint, prepare_cloud
    cfg = load_checkpoint(CHECKPOINT).config
    out = {}
    for name, index in (("src", 21), ("ref", 34)):
        xyz, normals, _ = prepare_cloud(_load_fragment(shared_data, index), cfg.num_points, cfg.normal_k,
                                        max_input_points=cfg.max_input_points)
        out[f"{name}_xyz"], out[f"{name}_normals"] = xyz.numpy(), normals.numpy()
    return out


@pytest.mark.slow
def test_roitr_inputs_fixture_is_current(shared_data):
    pytest.importorskip("open3d", reason="Open3D computes the normals")
    if not (shared_data / PAIR.format(21)).exists():
        pytest.skip("3DMatch fragment pair missing")
    made = _prepared(shared_data)
    if os.environ.get("PC3D_WRITE_GPU_FIXTURES") == "1":
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(FIXTURE, **made, source=np.array(
            "3DMatch predator_demo cloud_bin_21 (src) / cloud_bin_34 (ref) from ../shared/data; "
            "pc3d prepare_cloud with checkpoints/roitr_synthetic_tiny.pth's config (Open3D normals, FPS)"))
    stored = np.load(FIXTURE)
    for key, value in made.items():
        np.testing.assert_allclose(stored[key], value, rtol=0, atol=1e-6, err_msg=key)


def _forward(model, inputs, device):
    from pc3d.models.registration.roitr import load_checkpoint
    model = load_checkpoint(CHECKPOINT).to(device)
    tensors = [torch.from_numpy(inputs[k]).to(device) for k in ("src_xyz", "src_normals", "ref_xyz", "ref_normals")]
    with torch.no_grad():
        out = model(*tensors)
        matches = model.match(out)
    return out, matches


@pytest.mark.gpu
def test_roitr_forward_on_the_device_matches_the_cpu(device):
    inputs = dict(np.load(FIXTURE))
    got, got_matches = _forward(None, inputs, device)
    want, want_matches = _forward(None, inputs, torch.device("cpu"))
    assert got.src_fine.device.type == device.type
    for name in ("src_fine", "ref_fine", "src_coarse", "ref_coarse"):
        a, b = getattr(got, name).cpu(), getattr(want, name)
        torch.testing.assert_close(a, b, rtol=FEATURE_TOL, atol=FEATURE_TOL * float(b.abs().max()))
    # same pyramid (FPS and kNN are exact): the same superpoints and patches
    assert torch.equal(got.src_patches.cpu(), want.src_patches)
    # correspondences: nearly the same set (a score at the threshold may flip)
    pairs = lambda m: {(int(s), int(r)) for s, r in zip(m["src_index"].cpu(), m["ref_index"].cpu())}
    a, b = pairs(got_matches), pairs(want_matches)
    assert len(b) > 20 and len(a & b) >= 0.95 * len(b), (len(a), len(b), len(a & b))


@pytest.mark.gpu
def test_roitr_registration_with_a_device(device, shared_data):
    pytest.importorskip("open3d", reason="RoITrRegistration prepares normals and runs ICP with Open3D")
    if not (shared_data / PAIR.format(21)).exists():
        pytest.skip(f"{shared_data / PAIR.format(21)} missing (make gpu-prep carries no 3DMatch pair: no Open3D there)")
    from pc3d.models.registration.roitr import RoITrRegistration
    src, ref = _load_fragment(shared_data, 21), _load_fragment(shared_data, 34)
    result = RoITrRegistration.from_checkpoint(CHECKPOINT, device=device).register(src, ref)
    cpu = RoITrRegistration.from_checkpoint(CHECKPOINT).register(src, ref)
    rotation = result.transform[:3, :3]
    assert np.isfinite(result.transform).all() and np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
    assert result.correspondences.shape[1] == 2 and len(result.correspondences) > 0
    assert abs(len(result.correspondences) - len(cpu.correspondences)) <= 0.05 * len(cpu.correspondences) + 2
