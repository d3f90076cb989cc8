"""DSVT (Haiyang-W/DSVT, an OpenPCDet fork) configs and checkpoints -> pc3d.

Two translations, both pure functions of their input:
- `convert_config(model_cfg, class_names, point_cloud_range, voxel_size, point_features)`: the reference
  YAML's `MODEL` section (`DynPillarVFE3D`, `DSVT`, `PointPillarScatter3d`, `BaseBEVResBackbone`,
  `CenterHead`) -> a pc3d config `{"dataset": ..., "model": ...}` that computes what the reference
  computes (its reference-parity options set, see docs/reference_parity.md);
- `convert_state_dict(state)`: the reference's `model_state` (keys `vfe.`, `backbone_3d.`, `backbone_2d.`,
  `dense_head.`) -> pc3d's `Detector` state_dict.
Per-section converters (`*_section`) and key maps (`*_keys`) serve the stage fixtures. Anything the
translation does not know is an error naming the module / keys and what is supported.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Mapping, Sequence

import torch

REPO = "Haiyang-W/DSVT"
SUPPORTED = {"VFE": ("DynPillarVFE3D",), "BACKBONE_3D": ("DSVT",), "MAP_TO_BEV": ("PointPillarScatter3d",),
             "BACKBONE_2D": ("BaseBEVResBackbone",), "DENSE_HEAD": ("CenterHead",)}
# reference head branch -> pc3d HeadPrediction field
HEAD_BRANCHES = {"hm": "heatmap", "center": "offset", "center_z": "height", "dim": "size", "rot": "heading",
                 "vel": "velocity", "iou": "iou"}
REFERENCE_PI = 3.1415  # DSVT's normalize_pos constant


class ConversionError(ValueError):
    """A reference config or checkpoint that pc3d cannot translate (the message says what and why)."""


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
    return {"type": "scatter" if nz == 1 else "height_compression"}


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


def dense_head_section(section: Mapping, class_names: Sequence[str]) -> dict:
    _check_name(section, "DENSE_HEAD")
    where = "MODEL.DENSE_HEAD"
    if section.get("CLASS_AGNOSTIC", False):
        raise ConversionError(f"{where}.CLASS_AGNOSTIC: True is not supported")
    if section.get("USE_BIAS_BEFORE_NORM", False):
        raise ConversionError(f"{where}.USE_BIAS_BEFORE_NORM: True is not supported by the DSVT converter")
    if float(section.get("BN_EPS", 1e-5)) != 1e-3:
        raise ConversionError(f"{where}.BN_EPS {section.get('BN_EPS', 1e-5)}: pc3d's head uses BatchNorm eps 1e-3")
    if int(section.get("UPSAMPLE", 1)) != 1:
        raise ConversionError(f"{where}.UPSAMPLE > 1 is not supported")
    head_dict = dict(section["SEPARATE_HEAD_CFG"]["HEAD_DICT"])
    unknown = set(head_dict) - set(HEAD_BRANCHES)
    if unknown:
        raise ConversionError(f"{where}.SEPARATE_HEAD_CFG.HEAD_DICT: unsupported branches {sorted(unknown)} "
                              f"(supported: {sorted(HEAD_BRANCHES)})")
    widths = {"center": 2, "center_z": 1, "dim": 3, "rot": 2, "vel": 2, "iou": 1}
    for name, spec in head_dict.items():
        if int(spec["out_channels"]) != widths[name]:
            raise ConversionError(f"{where}: branch {name!r} has {spec['out_channels']} outputs, pc3d needs {widths[name]}")
    convs = {int(spec["num_conv"]) for spec in head_dict.values()} | {int(section.get("NUM_HM_CONV", 2))}
    if len(convs) != 1:
        raise ConversionError(f"{where}: branches with different num_conv {sorted(convs)} are not supported")
    groups = [[c for c in g if c in class_names] for g in section["CLASS_NAMES_EACH_HEAD"]]
    post = section["POST_PROCESSING"]
    nms_cfg = post["NMS_CONFIG"]
    nms_type = nms_cfg["NMS_TYPE"]
    if nms_type == "multi_class_nms":
        nms = {"type": "rotated", "iou_threshold": [float(t) for t in nms_cfg["NMS_THRESH"]]}
    elif nms_type == "nms_gpu":
        nms = {"type": "rotated", "iou_threshold": float(nms_cfg["NMS_THRESH"])}
    else:
        raise ConversionError(f"{where}.POST_PROCESSING.NMS_CONFIG.NMS_TYPE {nms_type!r}: supported are "
                              "multi_class_nms, nms_gpu")
    iou = None
    if "iou" in head_dict:
        rect = post.get("IOU_RECTIFIER") if post.get("USE_IOU_TO_RECTIFY_SCORE", False) else None
        iou = [float(a) for a in rect] if rect is not None else [0.0] * len(class_names)
        if len(iou) != len(class_names):
            raise ConversionError(f"{where}.POST_PROCESSING.IOU_RECTIFIER needs one value per class, got {rect}")
    target = section.get("TARGET_ASSIGNER_CONFIG", {})
    weights = section.get("LOSS_CONFIG", {}).get("LOSS_WEIGHTS", {})
    out = {"type": "centerpoint", "class_groups": groups, "feature_stride": int(target.get("FEATURE_MAP_STRIDE", 1)),
           "shared_channels": int(section["SHARED_CONV_CHANNEL"]), "num_conv": convs.pop(),
           "heatmap": {"min_radius": int(target.get("MIN_RADIUS", 2)),
                       "gaussian_overlap": float(target.get("GAUSSIAN_OVERLAP", 0.1)),
                       "max_objs": int(target.get("NUM_MAX_OBJS", 500))},
           "regression": {"offset": 2, "height": 1, "size": 3, "heading": 2, "velocity": 2 if "vel" in head_dict else 0},
           "iou_rectification": iou if iou is not None else False,
           "loss_weights": {"heatmap": float(weights.get("cls_weight", 1.0)),
                            "regression": float(weights.get("loc_weight", 2.0))},
           # the reference keeps the top MAX_OBJ_PER_SAMPLE peaks of each class group, then thresholds
           "decode": {"score_threshold": float(post["SCORE_THRESH"]), "pre_max_size": int(post["MAX_OBJ_PER_SAMPLE"]),
                      "post_max_size": int(post["MAX_OBJ_PER_SAMPLE"]),
                      "post_center_range": [float(v) for v in post["POST_CENTER_LIMIT_RANGE"]], "nms": nms}}
    if "code_weights" in weights:
        out["loss_weights"]["code_weights"] = [float(w) for w in weights["code_weights"]]
    return out


def convert_config(model_cfg: Mapping, class_names: Sequence[str], point_cloud_range: Sequence[float],
                   voxel_size: Sequence[float], point_features: Sequence[str]) -> dict:
    """Reference `MODEL` section (+ CLASS_NAMES, POINT_CLOUD_RANGE, VOXEL_SIZE) -> pc3d config dict."""
    known = {"NAME", "VFE", "BACKBONE_3D", "MAP_TO_BEV", "BACKBONE_2D", "DENSE_HEAD", "POST_PROCESSING"}
    unknown = set(model_cfg) - known
    if unknown:
        raise ConversionError(f"MODEL: unsupported sections {sorted(unknown)} (supported: {sorted(known)})")
    for kind in SUPPORTED:
        if kind not in model_cfg:
            raise ConversionError(f"MODEL.{kind} is missing; the DSVT converter needs {list(SUPPORTED)}")
    pcr = [float(v) for v in point_cloud_range]
    vs = [float(v) for v in voxel_size]
    check_sparse_shape(model_cfg["BACKBONE_3D"], pcr, vs)
    vfe = vfe_section(model_cfg["VFE"], vs, pcr)
    backbone = backbone_3d_section(model_cfg["BACKBONE_3D"], vfe["channels"][-1])
    model = {"voxelization": {"voxel_size": vs, "point_range": pcr, "mode": "dynamic"}, "vfe": vfe,
             "backbone_3d": backbone, "to_bev": map_to_bev_section(model_cfg["MAP_TO_BEV"], backbone["dims"][-1]),
             "backbone_2d": backbone_2d_section(model_cfg["BACKBONE_2D"]),
             "head": dense_head_section(model_cfg["DENSE_HEAD"], class_names)}
    return {"dataset": {"class_names": list(class_names), "point_features": list(point_features),
                        "point_range": pcr}, "model": model}


# ---------------------------------------------------------------- state dicts
Rule = tuple[str, str, Callable | None]


def _qkv(index: int):
    def take(t: torch.Tensor) -> torch.Tensor:
        return t.chunk(3, dim=0)[index].clone()
    return take


def _swap_cos_sin(t: torch.Tensor) -> torch.Tensor:
    """The reference's `rot` branch is (cos, sin); pc3d's `heading` branch is (sin, cos)."""
    return t[[1, 0]].clone()


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


def head_rules(num_conv: int) -> list[Rule]:
    """CenterHead -> CenterPointHead; the reference's branch `k` (Sequential(conv, bn, relu)) is pc3d's
    flat layers 3k, 3k+1; its last conv (index num_conv - 1) is pc3d's layer 3 (num_conv - 1)."""
    rules: list[Rule] = [(r"shared_conv\.([01])\." + _BN, r"shared.\1.\2", None)]
    last = num_conv - 1
    for ref, ours in HEAD_BRANCHES.items():
        for k in range(last):
            rules.append((rf"heads_list\.(\d+)\.{ref}\.{k}\.0\.weight", rf"groups.\1.{ours}.{3 * k}.weight", None))
            rules.append((rf"heads_list\.(\d+)\.{ref}\.{k}\.1\." + _BN, rf"groups.\1.{ours}.{3 * k + 1}.\2", None))
        fix = _swap_cos_sin if ref == "rot" else None
        rules.append((rf"heads_list\.(\d+)\.{ref}\.{last}\.(weight|bias)", rf"groups.\1.{ours}.{3 * last}.\2", fix))
    return rules


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


PREFIXES = {"vfe": ("vfe", VFE_RULES), "backbone_3d": ("backbone_3d", BACKBONE_3D_RULES),
            "backbone_2d": ("backbone_2d", BACKBONE_2D_RULES), "dense_head": ("head", None)}


def convert_state_dict(state: Mapping[str, torch.Tensor], num_conv: int = 2,
                       sections: Sequence[str] = ("vfe", "backbone_3d", "backbone_2d", "dense_head")) -> dict:
    """Reference `model_state` (OpenPCDet prefixes) -> pc3d state_dict (prefixes `vfe.`, `backbone_3d.`,
    `backbone_2d.`, `head.`). Keys outside `sections` are an error."""
    if "model_state" in state and isinstance(state["model_state"], Mapping):
        state = state["model_state"]
    out: dict[str, torch.Tensor] = {}
    by_section: dict[str, dict] = {s: {} for s in sections}
    stray = []
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in by_section:
            by_section[head][rest] = value
        else:
            stray.append(key)
    if stray:
        raise ConversionError(f"checkpoint keys outside the supported modules {list(sections)}: {stray[:8]}")
    for section, sub in by_section.items():
        prefix, rules = PREFIXES[section]
        rules = head_rules(num_conv) if rules is None else rules
        for k, v in map_keys(sub, rules, f"checkpoint {section}").items():
            out[f"{prefix}.{k}"] = v
    return out


def check_against(model: torch.nn.Module, converted: Mapping[str, torch.Tensor], where: str) -> None:
    """Every pc3d key filled and every shape equal, or one error listing what is missing / mismatched."""
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    extra = sorted(set(converted) - set(own))
    shapes = [f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in converted and tuple(own[k].shape) != tuple(converted[k].shape)]
    problems = []
    if missing:
        problems.append(f"pc3d keys not filled by the checkpoint: {missing[:8]}")
    if extra:
        problems.append(f"converted keys the pc3d model lacks: {extra[:8]}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:8]))
    if problems:
        raise ConversionError(f"{where}: " + " | ".join(problems))
