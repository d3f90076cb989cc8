"""pc3d's RoITr in reference mode computes what haoyu94/RoITr computes.

Fixture `roitr_tiny_3dlomatch.pt`: the reference RIGA_v2 run in a harness outside the project (CUDA
pointops replaced by tie-exact CPU emulations, torch CPU), widths x0.125, every parameter and buffer seeded
randomly, on the real 3DLoMatch pair 7-scenes-redkitchen (21, 34) subsampled. Layout: reference, model_cfg
(the reference's keys), state_dict (the reference's key names), seed, inputs, outputs, stages.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pc3d.compat.roitr import UnmappedKeyError, convert_state_dict, model_config, width_factor
from pc3d.models.registration.roitr import RoITr, RoITrConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
TOL = 1e-4


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURES / "roitr_tiny_3dlomatch.pt", weights_only=False)


@pytest.fixture(scope="module")
def run(fixture):
    sd = fixture["state_dict"]
    cfg = {k: v for k, v in fixture["model_cfg"].items() if k != "type"}
    model = RoITr(RoITrConfig(**model_config(cfg, width_factor(sd)))).eval()
    model.load_state_dict(convert_state_dict(sd), strict=True)
    inp = fixture["inputs"]
    with torch.no_grad():
        out = model(inp["src_points"], inp["src_normals"], inp["tgt_points"], inp["tgt_normals"])
        matches = model.match(out)
        transform, _ = model.estimate(matches, "reference_ransac")
    return model, out, matches, transform


def _close(name, got, want):
    diff = (got.double() - want.double()).abs().max().item() if got.numel() else 0.0
    print(f"{name}: max_abs_diff={diff:.3e} shape={tuple(got.shape)}")
    assert got.shape == want.shape and diff <= TOL, name


def test_fixture_layout(fixture):
    assert set(fixture) >= {"reference", "model_cfg", "state_dict", "seed", "inputs", "outputs"}
    assert fixture["reference"]["repo"] == "haoyu94/RoITr" and len(fixture["reference"]["commit"]) == 40
    assert "fine_matching_topk" in fixture["model_cfg"]


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_encoder_levels_equal(fixture, run, level):
    _, (src, ref), _, _ = run
    stages = {k[len("stage/"):]: v for k, v in fixture["outputs"].items() if k.startswith("stage/")}
    for side, feats in (("src", src), ("tgt", ref)):
        lv = feats.levels[level - 1]
        assert torch.equal(lv["knn"], stages[f"enc{level}/{side}/knn"].long()), f"enc{level} {side} kNN"
        if level > 1:
            assert torch.equal(lv["fps"], stages[f"enc{level}/{side}/fps"].long()), f"enc{level} {side} FPS"
        _close(f"enc{level}/{side}/feats", lv["feats"], stages[f"enc{level}/{side}/feats"])


def test_superpoint_and_point_features_equal(fixture, run):
    _, (src, ref), _, _ = run
    out = fixture["outputs"]
    _close("global/src", src.global_feats, out["stage/global/src"])
    _close("global/tgt", ref.global_feats, out["stage/global/tgt"])
    _close("src_nodes", src.nodes, out["src_nodes"])
    _close("tgt_nodes", ref.nodes, out["tgt_nodes"])
    _close("src_node_feats", src.node_feats, out["src_node_feats"])
    _close("tgt_node_feats", ref.node_feats, out["tgt_node_feats"])
    _close("src_point_feats", src.point_feats, out["src_point_feats"])
    _close("tgt_point_feats", ref.point_feats, out["tgt_point_feats"])


def test_coarse_and_fine_correspondences_equal(fixture, run):
    _, _, matches, _ = run
    out = fixture["outputs"]
    pairs = matches["superpoint_pairs"]
    assert torch.equal(pairs[:, 0], out["src_node_corr_indices"]) and torch.equal(pairs[:, 1], out["tgt_node_corr_indices"])
    assert len(matches["scores"]) == len(out["corr_scores"]) > 0
    _close("src_corr_points", matches["src_points"], out["src_corr_points"])
    _close("tgt_corr_points", matches["ref_points"], out["tgt_corr_points"])
    _close("corr_scores", matches["scores"], out["corr_scores"])


def test_estimated_transform_equal(fixture, run):
    *_, transform = run
    _close("ransac_transform", torch.from_numpy(transform), fixture["outputs"]["ransac_transform"])


def test_full_size_reference_config_maps_completely():
    full = json.loads((FIXTURES / "roitr_full_size_keys.json").read_text())
    fake = {k: torch.zeros(shape) for k, shape in full["state_dict"].items()}
    converted = convert_state_dict(fake)
    model = RoITr(RoITrConfig(**model_config(full["model_cfg"], width_factor(fake))))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == want
    assert width_factor(fake) == 1.0


def test_unmapped_key_is_named():
    with pytest.raises(UnmappedKeyError, match="backbone.enc9.0.mystery.weight"):
        convert_state_dict({"backbone.enc9.0.mystery.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="transformer_architecture"):
        model_config({"transformer_architecture": ["self", "other"]})
    with pytest.raises(ValueError, match="architecture"):
        RoITrConfig(architecture="official")


REFERENCE_YAML = """\
misc: {mode: test}
model: {transformer_architecture: [self, cross, self, cross, self, cross], with_cross_pos_embed: true}
data: {benchmark: 3DLoMatch, rotated: false}
coarse_matching: {matching_radius: 0.05, num_gt_coarse_corr: 128, num_est_coarse_corr: 48, coarse_overlap_threshold: 0.1}
fine_matching: {point_per_patch: 64, fine_matching_topk: 3, fine_matching_mutual: true,
  fine_matching_confidence_threshold: 0.05, fine_matching_use_dustbin: false, fine_matching_use_global_score: false,
  fine_matching_correspondence_threshold: 3}
"""


def test_convert_cli_writes_a_checkpoint_register_uses(fixture, tmp_path):
    from pc3d.cli.convert_checkpoint import main
    from pc3d.models.registration.roitr import RoITrRegistration

    cfg = tmp_path / "tdmatch.yaml"
    cfg.write_text(REFERENCE_YAML)
    ckpt = tmp_path / "model.pth"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in fixture["state_dict"].items()}}, ckpt)
    assert main(["--from", "roitr", "--cfg", str(cfg), "--ckpt", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    reg = RoITrRegistration.from_checkpoint(tmp_path / "out" / "model.pth", pose="reference_ransac", icp=False)
    assert reg.model.config.architecture == "reference" and reg.model.config.max_input_points == 30000
    inp = fixture["inputs"]
    src, ref = inp["src_points"].double().numpy(), inp["tgt_points"].double().numpy()
    result = reg.register(src, ref)
    assert result.transform.shape == (4, 4) and np.isfinite(result.transform).all()
    # same points in, same correspondences out as the fixture's reference run (normals re-estimated here
    # from the same points with the same rule)
    assert result.correspondences.shape[1] == 2
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"backbone.enc9.0.mystery.weight": torch.zeros(1)}}, bad)
    assert main(["--from", "roitr", "--cfg", str(cfg), "--ckpt", str(bad), "--out", str(tmp_path / "o2")]) == 2
