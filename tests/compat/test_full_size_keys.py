"""Full-size OpenPCDet configs map completely: every reference key is used and every shape matches.

The JSON fixtures hold the key names and shapes of the reference built at full size (nuScenes
cbgs_voxel0075_res3d_centerpoint, Waymo centerpoint), plus the config sections the converter reads.
"""
import json
from pathlib import Path

import pytest
import torch

from pc3d.compat.openpcdet import DETECTORS, FAMILY
from pc3d.compat.registry import ConversionError, RefContext, convert_sections, family
from pc3d.compat.stages import build_detector
from pc3d.checkpoint import load_model_weights

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
KEY_FILES = sorted(FIXTURE_DIR.glob("*.keys.json"))


def _load(path):
    data = json.loads(path.read_text())
    state = {k: torch.zeros(shape) for k, shape in data["state_dict_shapes"].items()}
    ctx = RefContext.from_args(data)
    return data, state, ctx


@pytest.mark.parametrize("path", KEY_FILES, ids=[p.name.split(".")[0] for p in KEY_FILES])
def test_full_size_checkpoint_maps_completely(path):
    data, state, ctx = _load(path)
    model_cfg = data["model_cfg"]
    pc3d_cfg, pc3d_state = convert_sections(family(FAMILY), model_cfg, DETECTORS[model_cfg["NAME"]].sections,
                                            state, ctx)
    model = build_detector(pc3d_cfg, ctx, {})
    load_model_weights(model, pc3d_state, str(path))  # strict: no missing / unexpected / wrongly shaped key
    assert len(pc3d_state) == len(state)  # one pc3d tensor per reference tensor (no weights invented)
    # the reference's widths came through: the BEV map is NUM_BEV_FEATURES wide
    assert model.to_bev.out_channels == model_cfg["MAP_TO_BEV"]["NUM_BEV_FEATURES"]


def test_unmapped_reference_key_is_named():
    data, state, ctx = _load(KEY_FILES[0])
    state["dense_head.heads_list.0.extra_branch.0.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="extra_branch"):
        convert_sections(family(FAMILY), data["model_cfg"], DETECTORS["CenterPoint"].sections, state, ctx)


def test_stray_top_level_key_is_named():
    data, state, ctx = _load(KEY_FILES[0])
    state["global_step_buffer"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="global_step_buffer"):
        convert_sections(family(FAMILY), data["model_cfg"], DETECTORS["CenterPoint"].sections, state, ctx)


def test_shape_mismatch_is_named():
    data, state, ctx = _load(KEY_FILES[0])
    key = "backbone_2d.blocks.0.4.weight"
    state[key] = torch.zeros(3, 3, 3, 3)
    pc3d_cfg, pc3d_state = convert_sections(family(FAMILY), data["model_cfg"], DETECTORS["CenterPoint"].sections,
                                            state, ctx)
    model = build_detector(pc3d_cfg, ctx, {})
    with pytest.raises(ValueError, match=r"backbone_2d\.blocks\.0\.1\.0\.weight"):
        load_model_weights(model, pc3d_state, "ckpt")


def test_unsupported_module_lists_supported():
    data, state, ctx = _load(KEY_FILES[0])
    model_cfg = dict(data["model_cfg"], BACKBONE_3D={"NAME": "VoxelBackBone8x"})
    with pytest.raises(ConversionError, match="unsupported openpcdet module 'VoxelBackBone8x'.*supported: .*VoxelResBackBone8x"):
        convert_sections(family(FAMILY), model_cfg, DETECTORS["CenterPoint"].sections, state, ctx)


def test_spconv1_kernel_layout_is_converted():
    data, state, ctx = _load(KEY_FILES[0])
    key = "backbone_3d.conv2.0.0.weight"
    out, kz, ky, kx, cin = state[key].shape
    state[key] = torch.arange(state[key].numel(), dtype=torch.float32).reshape(out, kz, ky, kx, cin)
    spconv2 = state[key].clone()
    state[key] = spconv2.permute(1, 2, 3, 4, 0).contiguous()  # spconv 1.x: (k, k, k, in, out)
    _, pc3d_state = convert_sections(family(FAMILY), data["model_cfg"], DETECTORS["CenterPoint"].sections, state, ctx)
    assert torch.equal(pc3d_state["backbone_3d.conv2.0.0.weight"], spconv2)
