"""FlatFormer (mit-han-lab/flatformer middle encoder) conversion: full-size keys, reference options that
matter for parity, mmdet3d config / checkpoint files and `--from flatformer` errors."""
import json
from pathlib import Path

import pytest
import torch

from pc3d.compat import flatformer
from pc3d.compat.fixture import load_fixture
from pc3d.compat.registry import ConversionError, load_into
from pc3d.compat.verify import verify_fixture
from pc3d.models.backbones_3d import build_backbone_3d

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
SHAPES = FIXTURE_DIR / "flatformer_waymo_middle_encoder.shapes.json"
TAIL = FIXTURE_DIR / "flatformer_middle_encoder.pt"
NORMPOS = FIXTURE_DIR / "flatformer_middle_encoder_normpos.pt"


def test_waymo_size_middle_encoder_maps_completely():
    data = json.loads(SHAPES.read_text())
    state = {k: torch.randn(shape) for k, shape in data["state_dict_shapes"].items()}
    cfg, converted = flatformer.convert_middle_encoder({"middle_encoder": data["model_cfg"]}, state)
    assert cfg["backbone_3d"]["group_size"] == 144 and cfg["backbone_3d"]["window_shape"] == [13, 13]
    assert cfg["to_bev"]["spatial_shape"] == [1, 468, 468]
    module = build_backbone_3d(cfg["backbone_3d"])
    load_into(module, {k[len("backbone_3d."):]: v for k, v in converted.items()}, "waymo FlatFormer")
    # packed in_proj split in q, k, v order
    w = state["middle_encoder.block_list.1.block.3.attn.attn.in_proj_weight"]
    assert torch.equal(module.blocks[1][3].attn.v_proj.weight, w[256:])


@pytest.mark.parametrize("option, value, path", [("mask_padding", True, TAIL), ("pos_pi", 3.141592653589793, NORMPOS),
                                                 ("activation", "relu", TAIL)])
def test_reference_options_are_needed(monkeypatch, option, value, path):
    """Each option the converter sets changes the result beyond the tolerance: the fixtures exercise it."""
    original = flatformer.backbone_3d_section
    monkeypatch.setattr(flatformer, "backbone_3d_section", lambda s: {**original(s), option: value})
    assert max(d.max_abs_diff for d in verify_fixture(path).diffs) > 1e-4


def test_tail_fixture_has_a_padded_group():
    fx = load_fixture(TAIL)
    assert fx.inputs["voxel_coords"].shape[0] % fx.model_cfg["group_size"] != 0


def _write_mmdet3d(tmp_path, model_src: str, state: dict):
    cfg = tmp_path / "ff.py"
    cfg.write_text("_base_ = ['../base.py']\nvoxel_size = (0.32, 0.32, 6)\npoint_cloud_range = [-74.88, -74.88, -2, 74.88, 74.88, 4]\n"
                   "pipeline = [dict(type='Load', dim=len(voxel_size))]\n" + model_src)
    ckpt = tmp_path / "ff.pth"
    torch.save({"state_dict": state, "meta": {}}, ckpt)
    return cfg, ckpt


def test_mmdet3d_files_convert_like_the_fixture(tmp_path):
    fx = load_fixture(TAIL)
    args = ", ".join(f"{k}={v!r}" for k, v in fx.model_cfg.items())
    cfg_path, ckpt = _write_mmdet3d(tmp_path, "model = dict(type='DynamicCenterPoint', voxel_layer=dict("
                                    "voxel_size=voxel_size[:2], low=-point_cloud_range[0] * 2), "
                                    f"middle_encoder=dict({args}))\n", fx.state_dict)
    model = flatformer.read_config(cfg_path)["model"]
    assert model["voxel_layer"] == {"voxel_size": [0.32, 0.32], "low": 149.76}
    cfg, state = flatformer.convert(cfg_path, ckpt)
    assert cfg["backbone_3d"]["mask_padding"] is False
    module = build_backbone_3d(cfg["backbone_3d"])
    load_into(module, {k[len("backbone_3d."):]: v for k, v in state.items()}, "ff")


def test_from_flatformer_names_unsupported_parts(tmp_path, capsys):
    from pc3d.cli.convert_checkpoint import main
    fx = load_fixture(TAIL)
    args = ", ".join(f"{k}={v!r}" for k, v in fx.model_cfg.items())
    cfg_path, ckpt = _write_mmdet3d(tmp_path, "model = dict(type='DynamicCenterPoint', backbone=dict(type='SECOND'), "
                                    f"middle_encoder=dict({args}))\n", fx.state_dict)
    code = main(["--from", "flatformer", "--cfg", str(cfg_path), "--ckpt", str(ckpt), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0 and "SECOND" in err and "middle_encoder" in err


def test_bad_inputs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConversionError, match="model = dict"):
        flatformer.read_config(bad)
    with pytest.raises(ConversionError, match="only 'FlatFormer'"):
        flatformer.backbone_3d_section({"type": "SparseEncoder"})
    with pytest.raises(ConversionError, match="output_shape"):
        flatformer.backbone_3d_section({"type": "FlatFormer", "sparse_shape": (10, 12, 1), "output_shape": (10, 12)})
    fx = load_fixture(TAIL)
    state = {**fx.state_dict, "middle_encoder.extra.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match="extra.weight"):
        flatformer.convert_middle_encoder({"middle_encoder": fx.model_cfg}, state)
