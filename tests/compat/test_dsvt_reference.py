"""DSVT-P / DSVT-V equal Haiyang-W/DSVT: every reference fixture verifies within 1e-4, the official
full-size Waymo configs and checkpoints map completely, and bad input gets a clear error.

The fixtures (tests/fixtures/reference/dsvt_*.pt) were made by running the reference modules on CPU at tiny
widths on two cropped real KITTI scans, every parameter and buffer seeded randomly; the full-size files hold
only the reference's key names and shapes (see docs/reference_parity.md).
"""
import copy
import json
import math
from pathlib import Path

import pytest
import torch

from pc3d.compat import dsvt as conv
from pc3d.compat.dsvt_verify import verify_fixture

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
PARITY = sorted(FIXTURES.glob("dsvt_*.pt"))
FULL_SIZE = sorted(FIXTURES.glob("dsvt_*_fullsize_keys.json"))
TOLERANCE = 1e-4


def load(path):
    return torch.load(path, weights_only=False)


def test_fixtures_present():
    stages = {p.name for p in PARITY}
    for kind in ("p", "v"):
        for stage in ("vfe", "backbone_3d", "map_to_bev", "backbone_2d", "dense_head", "detector"):
            assert f"dsvt_{kind}_{stage}.pt" in stages
    assert len(FULL_SIZE) == 2


@pytest.mark.parametrize("path", PARITY, ids=lambda p: p.stem)
def test_fixture_matches_reference(path):
    fx = load(path)
    assert fx["reference"]["repo"] == "Haiyang-W/DSVT" and len(fx["reference"]["commit"]) == 40
    results = verify_fixture(fx)
    assert results, "the verifier compared nothing"
    worst = {name: diff for name, diff in results if not diff <= TOLERANCE}
    assert not worst, f"{path.name}: outputs beyond {TOLERANCE}: {worst}"


def test_detector_fixtures_have_boxes():
    """The whole-detector fixtures decode real numbers of boxes and pc3d's NMS removes some (not vacuous)."""
    for kind in ("p", "v"):
        out = load(FIXTURES / f"dsvt_{kind}_detector.pt")["outputs"]
        for decoded, final in zip(out["decoded_box_dicts"], out["final_box_dicts"]):
            assert 0 < len(final["pred_boxes"]) < len(decoded["pred_boxes"])


@pytest.mark.parametrize("option,value,kind", [("pos_embed_shift", "block", "p"), ("shift_schedule", "stage", "v"),
                                               ("pool_empty", "masked", "v")])
def test_each_parity_option_matters(monkeypatch, option, value, kind):
    """pc3d's own default for each reference-parity option does NOT match the reference on the fixture."""
    original = conv.backbone_3d_section
    monkeypatch.setattr(conv, "backbone_3d_section", lambda *a: {**original(*a), option: value})
    results = dict(verify_fixture(load(FIXTURES / f"dsvt_{kind}_backbone_3d.pt")))
    assert results["voxel_features"] > 1e-2


def test_pooled_voxel_order_is_the_reference_order(monkeypatch):
    original = conv.backbone_3d_section
    monkeypatch.setattr(conv, "backbone_3d_section", lambda *a: {**original(*a), "voxel_order": "zyx"})
    results = dict(verify_fixture(load(FIXTURES / "dsvt_v_backbone_3d.pt")))
    assert results["voxel_features"] <= TOLERANCE and math.isinf(results["voxel_coords (order)"])


@pytest.mark.parametrize("path", FULL_SIZE, ids=lambda p: p.stem)
def test_official_waymo_config_maps_completely(path):
    """Official config -> pc3d Detector; a checkpoint with the reference's exact keys and shapes converts with
    every key used and every shape matching."""
    from pc3d.models.detector import Detector

    doc = json.loads(path.read_text())
    cfg = conv.convert_config(doc["model_cfg"], doc["class_names"], doc["point_cloud_range"], doc["voxel_size"],
                              ["x", "y", "z", "intensity", "elongation"][:doc["num_point_features"]])
    model = Detector.from_config(cfg)
    state = {"model_state": {k: torch.zeros(s) for k, s in doc["state_dict_shapes"].items()}}
    converted = conv.convert_state_dict(state)
    assert len(converted) == len(model.state_dict())
    conv.check_against(model, converted, path.name)  # raises on any missing / extra / mis-shaped key
    model.load_state_dict(converted)
    backbone = cfg["model"]["backbone_3d"]
    assert backbone["pos_embed_shift"] == "layer" and backbone["pool_empty"] == "zeros"


def test_unsupported_module_is_named():
    doc = json.loads(FULL_SIZE[0].read_text())
    cfg = copy.deepcopy(doc["model_cfg"])
    cfg["VFE"]["NAME"] = "PillarVFE"
    with pytest.raises(conv.ConversionError, match=r"MODEL.VFE.NAME 'PillarVFE'.*supported: \['DynPillarVFE3D'\]"):
        conv.convert_config(cfg, doc["class_names"], doc["point_cloud_range"], doc["voxel_size"], ["x", "y", "z"])
    cfg = copy.deepcopy(doc["model_cfg"])
    cfg["BACKBONE_3D"]["reduction_type"] = "linear"
    cfg["BACKBONE_3D"]["block_name"] = ["DSVTBlock", "DSVTBlock"]
    with pytest.raises(conv.ConversionError, match="block_name|reduction_type|entries"):
        conv.convert_config(cfg, doc["class_names"], doc["point_cloud_range"], doc["voxel_size"], ["x", "y", "z"])


def test_grid_mismatch_is_named():
    doc = json.loads(FULL_SIZE[0].read_text())
    with pytest.raises(conv.ConversionError, match=r"sparse_shape \[468, 468, 1\] does not match"):
        conv.convert_config(doc["model_cfg"], doc["class_names"], doc["point_cloud_range"], [0.4, 0.4, 6.0],
                            ["x", "y", "z"])


def test_unmapped_and_misshaped_keys_are_named():
    from pc3d.models.detector import Detector

    doc = json.loads(FULL_SIZE[0].read_text())
    state = {k: torch.zeros(s) for k, s in doc["state_dict_shapes"].items()}
    with pytest.raises(conv.ConversionError, match=r"no pc3d counterpart: \['stage_0.0.extra.weight'\]"):
        conv.convert_state_dict({**state, "backbone_3d.stage_0.0.extra.weight": torch.zeros(1)})
    with pytest.raises(conv.ConversionError, match=r"outside the supported modules.*roi_head.fc.weight"):
        conv.convert_state_dict({**state, "roi_head.fc.weight": torch.zeros(1)})
    cfg = conv.convert_config(doc["model_cfg"], doc["class_names"], doc["point_cloud_range"], doc["voxel_size"],
                              ["x", "y", "z", "intensity", "elongation"])
    model = Detector.from_config(cfg)
    bad = dict(state)
    bad["backbone_2d.blocks.0.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    converted = conv.convert_state_dict(bad)
    with pytest.raises(conv.ConversionError, match=r"shape mismatches: blocks.0.0.conv1.weight|backbone_2d.blocks.0.0.conv1"):
        conv.check_against(model, converted, "ckpt")
    del state["dense_head.shared_conv.0.weight"]
    with pytest.raises(conv.ConversionError, match=r"not filled by the checkpoint: \['head.shared.0.weight'\]"):
        conv.check_against(model, conv.convert_state_dict(state), "ckpt")


def test_default_dsvt_is_unchanged():
    """pc3d's own configs keep pc3d's behaviour: the parity options default to it."""
    from pc3d.models.backbones_3d.dsvt import DSVT

    net = DSVT(16, window_shape=[(12, 12, 8), (12, 12, 2)], set_size=24, dims=16, depths=1, num_heads=2,
               dim_feedforward=32, downsample_stride=[(1, 1, 4)])
    assert (net.pos_embed_shift, net.shift_schedule, net.pool_empty, net.voxel_order, net.pos_pi) == \
        ("block", "stage", "masked", "zyx", math.pi)
