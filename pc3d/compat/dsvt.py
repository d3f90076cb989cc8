"""DSVT (Haiyang-W/DSVT, an OpenPCDet fork) modules -> pc3d, registered in the "openpcdet" family.

DSVT's YAML and checkpoints have OpenPCDet's layout (`MODEL.NAME: CenterPoint`, keys `vfe.`, `backbone_3d.`,
`backbone_2d.`, `dense_head.`), so `tools/convert_checkpoint.py --from openpcdet` converts them once the
modules below are known: `DynPillarVFE3D`, `DSVT`, `PointPillarScatter3d`, `BaseBEVResBackbone`
(`CenterHead` and the `CenterPoint` detector are OpenPCDet's, in pc3d/compat/openpcdet.py).
Each converted section turns on the pc3d options that compute what the reference computes
(docs/reference_parity.md, "DSVT"); anything the translation does not know is a `ConversionError`
naming the module / keys and what is supported.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Mapping, Sequence

import torch

from pc3d.compat import stages
from pc3d.compat.registry import ConversionError, StageConverter

FAMILY = "openpcdet"
REPOS = ("Haiyang-W/DSVT",)
REPO = REPOS[0]
SUPPORTED = {"VFE": ("DynPillarVFE3D",), "BACKBONE_3D": ("DSVT",), "MAP_TO_BEV": ("PointPillarScatter3d",),
             "BACKBONE_2D": ("BaseBEVResBackbone",)}
REFERENCE_PI = 3.1415  # DSVT's normalize_pos constant


def _need(section: Mapping, key: str, where: str):
    if key not in section:
        raise ConversionError(f"{where}: missing {key!r}")
    return section[key]


def _check_name(section: Mapping, kind: str) -> None:
    name = section.get("NAME")
    if name not in SUPPORTED[kind]:
        raise ConversionError(f"MODEL.{kind}.NAME {name!r} is not supported by the DSVT converter "
                              f"(supported: {list(SUPPORTED[kind])})")


def grid_size(point_cloud_range: Sequence[float], voxel_size: Sequence[float]) -> list[int]:
    """(nx, ny, nz) as OpenPCDet rounds it."""
    return [int(round((point_cloud_range[a + 3] - point_cloud_range[a]) / voxel_size[a])) for a in range(3)]


# ---------------------------------------------------------------- config sections
def vfe_section(section: Mapping, voxel_size, point_cloud_range) -> dict:
    _check_name(section, "VFE")
    if not section.get("USE_ABSLOTE_XYZ", True):
        raise ConversionError("MODEL.VFE.USE_ABSLOTE_XYZ: False is not supported (pc3d's VFE always feeds the "
                              "absolute point coordinates)")
    nz = grid_size(point_cloud_range, voxel_size)[2]
    return {"type": "dynamic_voxel" if nz > 1 else "dynamic_pillar",
            "channels": [int(c) for c in _need(section, "NUM_FILTERS", "MODEL.VFE")],
            "with_distance": bool(section.get("WITH_DISTANCE", False)), "use_norm": bool(section.get("USE_NORM", True)),
            "use_cluster_center": True, "use_voxel_center": True}


def backbone_3d_section(section: Mapping, input_channels: int) -> dict:
    _check_name(section, "BACKBONE_3D")
    where = "MODEL.BACKBONE_3D"
    layer = _need(section, "INPUT_LAYER", where)
    blocks = list(_need(section, "block_name", where))
    if any(b != "DSVTBlock" for b in blocks):
        raise ConversionError(f"{where}.block_name {blocks}: only 'DSVTBlock' is supported")
    n = len(blocks)
    set_info = [list(s) for s in _need(section, "set_info", where)]
    d_model = [int(d) for d in _need(section, "d_model", where)]
    for key, value in (("set_info", set_info), ("d_model", d_model)):
        if [list(v) if isinstance(v, (list, tuple)) else v for v in layer.get(key, value)] != value:
            raise ConversionError(f"{where}.INPUT_LAYER.{key} {layer.get(key)} differs from {where}.{key} {value}")
    for key in ("set_info", "d_model", "nhead", "dim_feedforward"):
        if len(section[key]) != n:
            raise ConversionError(f"{where}.{key} needs {n} entries (one per stage), got {section[key]}")
    reduction = section.get("reduction_type", "attention")
    if n > 1 and reduction != "attention":
        raise ConversionError(f"{where}.reduction_type {reduction!r}: pc3d supports 'attention' pooling only")
    if n > 1 and len(set(d_model)) != 1:
        raise ConversionError(f"{where}.d_model {d_model}: the reference's attention pooling keeps the width, "
                              "so every stage needs the same d_model")
    if int(input_channels) != d_model[0]:
        raise ConversionError(f"{where}.d_model[0] = {d_model[0]} but the VFE outputs {input_channels} channels")
    sparse = [int(v) for v in _need(layer, "sparse_shape", where + ".INPUT_LAYER")]
    windows = [[int(v) for v in w] for w in _need(layer, "window_shape", where + ".INPUT_LAYER")]
    hybrid = [int(v) for v in _need(layer, "hybrid_factor", where + ".INPUT_LAYER")]
    strides = [[int(v) for v in s] for s in layer.get("downsample_stride", [])]
    shifts = [[list(map(int, s)) for s in stage] for stage in _need(layer, "shifts_list", where + ".INPUT_LAYER")]
    if len(windows) != n or len(shifts) != n or len(strides) != n - 1:
        raise ConversionError(f"{where}.INPUT_LAYER: window_shape / shifts_list need {n} entries and "
                              f"downsample_stride {n - 1}, got {len(windows)}, {len(shifts)}, {len(strides)}")
    # The reference drops the z shift of a window as tall as the grid (get_window_coors); bake that in.
    shape = list(sparse)
    for s in range(n):
        for i, window in enumerate((windows[s], [w * h for w, h in zip(windows[s], hybrid)])):
            if shape[2] == window[2]:
                shifts[s][i][2] = 0
        if s < n - 1:
            shape = [math.ceil(a / b) for a, b in zip(shape, strides[s])]
    return {"type": "dsvt_voxel" if n > 1 else "dsvt_pillar", "in_channels": int(input_channels),
            "window_shape": windows, "set_size": [int(s[0]) for s in set_info], "depths": [int(s[1]) for s in set_info],
            "dims": d_model, "num_heads": [int(h) for h in section["nhead"]],
            "dim_feedforward": [int(f) for f in section["dim_feedforward"]], "hybrid_factor": hybrid,
            "shifts": shifts, "downsample_stride": strides, "activation": section.get("activation", "relu"),
            "dropout": float(section.get("dropout", 0.0)), "normalize_pos": bool(layer.get("normalize_pos", False)),
            "pool_heads": 8,  # hard-coded in the reference's Stage_ReductionAtt_Block
            "pos_embed_shift": "layer", "shift_schedule": "global", "pool_empty": "zeros", "voxel_order": "xyz",
            "pos_pi": REFERENCE_PI}


def check_sparse_shape(section: Mapping, point_cloud_range, voxel_size) -> None:
    sparse = [int(v) for v in section["INPUT_LAYER"]["sparse_shape"]]
    grid = grid_size(point_cloud_range, voxel_size)
    if sparse != grid:
        raise ConversionError(f"MODEL.BACKBONE_3D.INPUT_LAYER.sparse_shape {sparse} does not match the voxel grid "
                              f"{grid} of POINT_CLOUD_RANGE / VOXEL_SIZE")


def map_to_bev_section(section: Mapping, in_channels: int | None = None) -> dict:
    _check_name(section, "MAP_TO_BEV")
    nx, ny, nz = (int(v) for v in _need(section, "INPUT_SHAPE", "MODEL.MAP_TO_BEV"))
    bev = int(_need(section, "NUM_BEV_FEATURES", "MODEL.MAP_TO_BEV"))
    if in_channels is not None and bev != in_channels * nz:
        raise ConversionError(f"MODEL.MAP_TO_BEV.NUM_BEV_FEATURES {bev} != backbone width {in_channels} x nz {nz}")
    # PointPillarScatter3d stacks z layers channel-major (c * nz + z), which is pc3d's height compression
    return {"type": "scatter" if nz == 1 else "height_compression", "spatial_shape": [nz, ny, nx]}


def backbone_2d_section(section: Mapping) -> dict:
    _check_name(section, "BACKBONE_2D")
    ups = list(section.get("UPSAMPLE_STRIDES") or [])
    nums = list(section.get("LAYER_NUMS") or [])
    if len(ups) > len(nums):
        raise ConversionError("MODEL.BACKBONE_2D: an extra final upsampling block (len(UPSAMPLE_STRIDES) > "
                              "len(LAYER_NUMS)) is not supported")
    return {"type": "resnet", "layer_nums": [int(v) for v in nums],
            "layer_strides": [int(v) for v in section["LAYER_STRIDES"]],
            "num_filters": [int(v) for v in section["NUM_FILTERS"]], "upsample_strides": ups,
            "num_upsample_filters": [int(v) for v in section.get("NUM_UPSAMPLE_FILTERS") or []],
            "project_first": True}


# ---------------------------------------------------------------- state dicts
Rule = tuple[str, str, Callable | None]


def _qkv(index: int):
    def take(t: torch.Tensor) -> torch.Tensor:
        return t.chunk(3, dim=0)[index].clone()
    return take


def _attention_rules(src: str, dst: str) -> list[Rule]:
    """nn.MultiheadAttention (packed in_proj) -> pc3d GroupAttention (q/k/v/out projections)."""
    rules = []
    for i, name in enumerate("qkv"):
        rules.append((src + r"in_proj_weight", dst + f"{name}_proj.weight", _qkv(i)))
        rules.append((src + r"in_proj_bias", dst + f"{name}_proj.bias", _qkv(i)))
    rules.append((src + r"out_proj\.(?P<p>weight|bias)", dst + r"out_proj.\g<p>", None))
    return rules


_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
VFE_RULES: list[Rule] = [(r"pfn_layers\.(\d+)\.linear\.(weight|bias)", r"layers.\1.linear.\2", None),
                         (r"pfn_layers\.(\d+)\.norm\." + _BN, r"layers.\1.norm.\2", None)]
BACKBONE_3D_RULES: list[Rule] = [
    (r"input_layer\.posembed_layers\.(\d+)\.(\d+)\.(\d+)\.position_embedding_head\.(\d)\." + _BN,
     r"pos_embeds.\1.\2.\3.net.\4.\5", None),
    *_attention_rules(r"stage_(\d+)\.(\d+)\.encoder_list\.(\d+)\.win_attn\.self_attn\.",
                      r"stages.\1.\2.\3.set_attn.attn."),
    (r"stage_(\d+)\.(\d+)\.encoder_list\.(\d+)\.win_attn\.linear1\.(weight|bias)", r"stages.\1.\2.\3.set_attn.ffn.fc1.\4", None),
    (r"stage_(\d+)\.(\d+)\.encoder_list\.(\d+)\.win_attn\.linear2\.(weight|bias)", r"stages.\1.\2.\3.set_attn.ffn.fc2.\4", None),
    (r"stage_(\d+)\.(\d+)\.encoder_list\.(\d+)\.win_attn\.(norm[12])\.(weight|bias)", r"stages.\1.\2.\3.set_attn.\4.\5", None),
    (r"stage_(\d+)\.(\d+)\.encoder_list\.(\d+)\.norm\.(weight|bias)", r"stages.\1.\2.\3.norm.\4", None),
    (r"residual_norm_stage_(\d+)\.(\d+)\.(weight|bias)", r"block_norms.\1.\2.\3", None),
    (r"stage_(\d+)_reduction\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
     r"pools.\1.attn.attn.\2", None),
    (r"stage_(\d+)_reduction\.pos_embedding", r"pools.\1.attn.slot_embedding", None),
    (r"stage_(\d+)_reduction\.norm\.(weight|bias)", r"pools.\1.attn.norm.\2", None),
]
BACKBONE_2D_RULES: list[Rule] = [
    (r"blocks\.(\d+)\.(\d+)\.(conv[12])\.weight", r"blocks.\1.\2.\3.weight", None),
    (r"blocks\.(\d+)\.(\d+)\.(bn[12])\." + _BN, r"blocks.\1.\2.\3.\4", None),
    (r"blocks\.(\d+)\.(\d+)\.downsample_layer\.([01])\." + _BN, r"blocks.\1.\2.shortcut.\3.\4", None),
    (r"deblocks\.(\d+)\.([01])\." + _BN, r"deblocks.\1.\2.\3", None),
]


def map_keys(state: Mapping[str, torch.Tensor], rules: Sequence[Rule], where: str) -> dict[str, torch.Tensor]:
    """Apply every matching rule to every key (a packed q/k/v tensor matches three); a key no rule
    matches, or two keys landing on one pc3d key, is an error naming them."""
    out, unmatched = {}, []
    for key, value in state.items():
        hits = [(m, target, fix) for pattern, target, fix in rules if (m := re.fullmatch(pattern, key))]
        if not hits:
            unmatched.append(key)
        for m, target, fix in hits:
            new_key = m.expand(target)
            if new_key in out:
                raise ConversionError(f"{where}: two reference keys map to {new_key!r}")
            out[new_key] = fix(value) if fix is not None else value
    if unmatched:
        raise ConversionError(f"{where}: {len(unmatched)} reference keys have no pc3d counterpart: {unmatched[:8]}"
                              f"{' ...' if len(unmatched) > 8 else ''}")
    return out




# ---------------------------------------------------------------- stage converters
def _weights(rules: Sequence[Rule], who: str):
    def convert(state, cfg, ctx):
        return map_keys(state, rules, who)
    return convert


def _no_weights(state, cfg, ctx):
    if state:
        raise ConversionError(f"PointPillarScatter3d has no weights but the checkpoint has {sorted(state)[:8]}")
    return {}


def _vfe_config(cfg, state, ctx):
    ctx.need("voxel_size", "point_cloud_range", who="VFE DynPillarVFE3D")
    return {"vfe": vfe_section(cfg, ctx.voxel_size, ctx.point_cloud_range), "voxelization": {"mode": "dynamic"}}


def _vfe_run(module, inputs, cfg, ctx):
    from pc3d.models.vfe import Voxelizer
    stages.need_inputs(inputs, ("points",), "DynPillarVFE3D")
    voxelized = Voxelizer(ctx.voxel_size, ctx.point_cloud_range, "dynamic")(inputs["points"].float(),
                                                                            stages.batch_size_of(inputs))
    return {"voxel_features": module(voxelized), "voxel_coords": voxelized.coords}


def _dsvt_config(cfg, state, ctx):
    if ctx.voxel_size is not None and ctx.point_cloud_range is not None:
        check_sparse_shape(cfg, ctx.point_cloud_range, ctx.voxel_size)
    # inside a whole detector the input width is the VFE's, which the reference requires to be d_model[0]
    width = ctx.input_channels if ctx.input_channels is not None else int(cfg["d_model"][0])
    return {"backbone_3d": backbone_3d_section(cfg, width)}


def _dsvt_build(cfg, ctx, inputs):
    from pc3d.models.backbones_3d import build_backbone_3d
    return build_backbone_3d(cfg["backbone_3d"])


def _dsvt_run(module, inputs, cfg, ctx):
    stages.need_inputs(inputs, ("voxel_features", "voxel_coords"), "DSVT")
    ctx.need("grid_size", who="DSVT")  # the input layer's sparse_shape, checked against it in _dsvt_config
    voxels = stages.sparse_voxels(inputs["voxel_features"], inputs["voxel_coords"], ctx.pc3d_spatial_shape,
                                  stages.batch_size_of(inputs), ctx)
    out = module(voxels)
    return {"voxel_features": out.features, "voxel_coords": out.coords}


def _scatter_config(cfg, state, ctx):
    return {"to_bev": map_to_bev_section(cfg)}


def _scatter_build(cfg, ctx, inputs):
    from pc3d.models.to_bev import build_to_bev
    stages.need_inputs(inputs, ("pillar_features",), "PointPillarScatter3d")
    return build_to_bev(cfg["to_bev"], int(inputs["pillar_features"].shape[1]), None)


def _scatter_run(module, inputs, cfg, ctx):
    stages.need_inputs(inputs, ("pillar_features", "voxel_coords"), "PointPillarScatter3d")
    voxels = stages.sparse_voxels(inputs["pillar_features"], inputs["voxel_coords"], module.spatial_shape,
                                  stages.batch_size_of(inputs), ctx)
    return {"spatial_features": module(voxels)}


def _bev_run(module, inputs, cfg, ctx):
    stages.need_inputs(inputs, ("spatial_features",), "BaseBEVResBackbone")
    return {"spatial_features_2d": module(inputs["spatial_features"].float())}


CONVERTERS = {
    "DynPillarVFE3D": StageConverter("DynPillarVFE3D", "VFE", "vfe.", "vfe", _vfe_config,
                                     _weights(VFE_RULES, "VFE DynPillarVFE3D"), stages.build_vfe, _vfe_run),
    "DSVT": StageConverter("DSVT", "BACKBONE_3D", "backbone_3d.", "backbone_3d", _dsvt_config,
                           _weights(BACKBONE_3D_RULES, "BACKBONE_3D DSVT"), _dsvt_build, _dsvt_run),
    "PointPillarScatter3d": StageConverter("PointPillarScatter3d", "MAP_TO_BEV", "map_to_bev_module.", "to_bev",
                                           _scatter_config, _no_weights, _scatter_build, _scatter_run),
    "BaseBEVResBackbone": StageConverter("BaseBEVResBackbone", "BACKBONE_2D", "backbone_2d.", "backbone_2d",
                                         lambda cfg, state, ctx: {"backbone_2d": backbone_2d_section(cfg)},
                                         _weights(BACKBONE_2D_RULES, "BACKBONE_2D BaseBEVResBackbone"),
                                         stages.build_backbone_2d, _bev_run),
}
