"""RoITr: rotation invariance (tested property), optimal transport, losses, checkpoints."""
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pc3d.models.registration.losses import (fine_matching_targets, optimal_transport_nll, overlap_aware_circle_loss,
                                             patch_overlaps)
from pc3d.models.registration.optimal_transport import LearnableLogOptimalTransport, log_sinkhorn
from pc3d.models.registration.roitr import (RoITr, RoITrConfig, RoITrRegistration, load_checkpoint, prepare_cloud,
                                            save_checkpoint)

TINY = dict(num_points=192, widths=(8, 16, 16, 16), strides=(1, 4, 2, 2), knn=(8, 8, 8, 8), global_dim=16,
            num_blocks=1, num_heads=2, patch_size=8, num_superpoint_matches=6, mutual_k=1, confidence_threshold=0.0,
            position_k=4)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # small tensors: extra intra-op threads only spin on a loaded 2-core machine (30x slower measured)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _wavy_surface(seed, n=700):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, size=(n, 2))
    z = 2.0 + 0.3 * np.sin(3 * xy[:, 0]) * np.cos(2 * xy[:, 1]) + 0.2 * xy[:, 0] ** 2
    return np.c_[xy, z]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = RoITr(RoITrConfig(**TINY)).double().eval()
    with torch.no_grad():
        model.optimal_transport.alpha.fill_(-3.0)  # untrained dustbin would swallow every match
    return model


def _run(model, src, ref, pose="svd"):
    sx, sn, si = prepare_cloud(src, model.config.num_points, dtype=torch.float64)
    rx, rn, ri = prepare_cloud(ref, model.config.num_points, dtype=torch.float64)
    with torch.no_grad():
        out = model(sx, sn, rx, rn)
        matches = model.match(out)
        transform, _ = model.estimate(matches, pose)
    return out, matches, transform, si, ri


def _homogeneous(rot):
    t = np.eye(4)
    t[:3, :3] = rot
    return t


@pytest.mark.parametrize("seed", [1, 2])
def test_features_correspondences_and_pose_are_rotation_invariant(tiny_model, seed):
    src = _wavy_surface(0)
    ref = _wavy_surface(0)[100:] + np.array([0.05, -0.02, 0.0])
    base_out, base_m, base_t, base_si, base_ri = _run(tiny_model, src, ref)
    assert len(base_m["src_index"]) > 0
    # Haar-uniform rotations of either / both clouds about the sensor origin
    rot_s = Rotation.random(random_state=seed).as_matrix()
    rot_r = Rotation.random(random_state=seed + 100).as_matrix()
    for rs, rr in [(rot_s, np.eye(3)), (np.eye(3), rot_r), (rot_s, rot_r)]:
        out, m, t, si, ri = _run(tiny_model, src @ rs.T, ref @ rr.T)
        torch.testing.assert_close(out.src_fine, base_out.src_fine, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.ref_fine, base_out.ref_fine, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.src_coarse, base_out.src_coarse, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.ref_coarse, base_out.ref_coarse, atol=1e-5, rtol=1e-5)
        assert torch.equal(si, base_si) and torch.equal(ri, base_ri)
        assert torch.equal(m["src_index"], base_m["src_index"]) and torch.equal(m["ref_index"], base_m["ref_index"])
        torch.testing.assert_close(m["scores"], base_m["scores"], atol=1e-5, rtol=1e-5)
        # the pose rotates accordingly: T' = R_ref T R_src^T
        np.testing.assert_allclose(t, _homogeneous(rr) @ base_t @ _homogeneous(rs).T, atol=1e-6)


def test_lgr_pose_equivariant_and_float32_close(tiny_model):
    src = _wavy_surface(3)
    ref = src[50:]
    _, _, base_t, _, _ = _run(tiny_model, src, ref, pose="lgr")
    rs = Rotation.random(random_state=7).as_matrix()
    _, _, t, _, _ = _run(tiny_model, src @ rs.T, ref, pose="lgr")
    np.testing.assert_allclose(t, base_t @ _homogeneous(rs).T, atol=1e-6)
    model32 = RoITr(tiny_model.config).eval()
    model32.load_state_dict({k: v.float() for k, v in tiny_model.state_dict().items()})
    a = prepare_cloud(src, 192)
    b = prepare_cloud(src @ rs.T, 192)
    with torch.no_grad():
        fa = model32(a[0], a[1], a[0], a[1]).src_fine
        fb = model32(b[0], b[1], b[0], b[1]).src_fine
    # float32: rounding can swap a near-tied k-th neighbour, so compare in aggregate
    assert float((fa - fb).abs().median()) < 2e-3 * float(fa.abs().median())
    same_nn = (torch.cdist(fa, fb).argmin(1) == torch.arange(len(fa))).float().mean()
    assert same_nn > 0.95


def test_log_sinkhorn_matches_plain_sinkhorn():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 7))
    mu, nu = np.full(5, 1 / 5), np.full(7, 1 / 7)
    k = np.exp(scores)
    u, v = np.ones(5), np.ones(7)
    for _ in range(200):
        u = mu / (k @ v)
        v = nu / (k.T @ u)
    ref = u[:, None] * k * v[None]
    got = log_sinkhorn(torch.from_numpy(scores)[None], torch.from_numpy(np.log(mu))[None],
                       torch.from_numpy(np.log(nu))[None], 200)[0].exp().numpy()
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_dustbin_plan_marginals_and_gradients():
    ot = LearnableLogOptimalTransport(iterations=200).double()
    scores = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    plan = ot(scores).exp()
    np.testing.assert_allclose(plan[:, :-1, :].sum(2).detach().numpy(), 1, atol=1e-6)   # each real row: prob 1
    np.testing.assert_allclose(plan[:, :, :-1].sum(1).detach().numpy(), 1, atol=1e-6)   # each real column
    plan[:, :-1, :-1].sum().backward()
    assert ot.alpha.grad is not None and torch.isfinite(scores.grad).all()


def test_losses_reward_the_right_structure():
    torch.manual_seed(0)
    patches = torch.rand(4, 6, 3)
    eye = torch.eye(4, dtype=torch.float64)
    overlaps = patch_overlaps(patches.double(), patches.double(), eye, 0.01)
    np.testing.assert_allclose(torch.diagonal(overlaps).numpy(), 1.0)
    feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    ov = torch.eye(4)
    good = overlap_aware_circle_loss(feats, feats, ov)
    bad = overlap_aware_circle_loss(feats, feats.roll(1, 0), ov)
    assert good < bad
    targets = fine_matching_targets(patches.double(), patches.double(), eye, 0.01)
    assert targets[:, :6, :6].equal(torch.eye(6, dtype=torch.bool).expand(4, 6, 6))
    assert not targets[:, 6, :].any() and not targets[:, :, 6].any()
    shifted = fine_matching_targets(patches.double(), patches.double() + 10, eye, 0.01)
    assert shifted[:, :6, 6].all() and shifted[:, 6, :6].all()
    plans = torch.log_softmax(torch.randn(4, 7, 7), dim=-1)
    assert optimal_transport_nll(plans, targets) > 0


def test_checkpoint_roundtrip_and_registration_api(tmp_path, tiny_model):
    model = RoITr(RoITrConfig(**TINY))
    path = tmp_path / "m.pth"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    reg = RoITrRegistration.from_checkpoint(path, pose="svd")
    src = _wavy_surface(4)
    res = reg.register(src, src)
    assert res.transform.shape == (4, 4) and res.seconds > 0
    assert res.correspondences.shape[1] == 2
    with pytest.raises(ValueError):
        reg.register(np.zeros((0, 3)), src)
    with pytest.raises(ValueError):
        RoITrRegistration(model, pose="icp")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(ValueError):
        RoITrConfig(widths=(1, 2), strides=(1, 2, 3), knn=(1, 2))


def test_verification_hypotheses_come_from_every_mutual_match(tiny_model):
    model = RoITr(RoITrConfig(**{**TINY, "confidence_threshold": 0.3, "mutual_k": 2})).double().eval()
    model.load_state_dict(tiny_model.state_dict())
    src = _wavy_surface(5)
    sx, sn, _ = prepare_cloud(src, model.config.num_points, dtype=torch.float64)
    rx, rn, _ = prepare_cloud(src @ Rotation.from_euler("z", 30, degrees=True).as_matrix().T, model.config.num_points,
                              dtype=torch.float64)
    with torch.no_grad():
        out = model(sx, sn, rx, rn)
    confident, every = model.match(out), model.match(out, 0.0)
    pairs = lambda m: set(zip(m["src_index"].tolist(), m["ref_index"].tolist()))
    assert pairs(confident) < pairs(every) and bool((confident["scores"] > 0.3).all())
    hypotheses = model.verification_hypotheses(out, 4)
    assert 1 <= len(hypotheses) <= 4 and all(h.shape == (4, 4) and np.isfinite(h).all() for h in hypotheses)
    np.testing.assert_allclose(hypotheses[0], model.estimate(every, "lgr")[0])
    with pytest.raises(ValueError, match="confidence_threshold"):
        model.match(out, -0.1)
    for name, value in (("confidence_threshold", 1.5), ("hypothesis_confidence_threshold", float("nan"))):
        with pytest.raises(ValueError, match=name):
            RoITrConfig(**{**TINY, name: value})


def test_shipped_checkpoint_matches_its_config():
    from pathlib import Path

    from pc3d.models.registration.roitr import DEFAULT_CHECKPOINT
    from pc3d.models.registration.training import load_config_yaml
    config, train = load_config_yaml(Path(__file__).resolve().parents[2] / "configs/threedmatch/roitr_synthetic_tiny.yaml")
    model = load_checkpoint(DEFAULT_CHECKPOINT)
    assert model.config == config and train.minutes <= 60
    assert DEFAULT_CHECKPOINT.stat().st_size < 5 * 2 ** 20
    payload = torch.load(str(DEFAULT_CHECKPOINT), weights_only=True)
    assert payload["iterations"] > 0
