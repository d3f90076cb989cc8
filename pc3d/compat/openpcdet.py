"""OpenPCDet (`open-mmlab/OpenPCDet`) configs and checkpoints -> pc3d.

- `CONVERTERS`: OpenPCDet module NAME -> `StageConverter` (MeanVFE, VoxelResBackBone8x, HeightCompression,
  BaseBEVBackbone, CenterHead); `DETECTORS`: CenterPoint (all five sections).
- `convert_config(yaml)`: the reference YAML's `MODEL` section, `CLASS_NAMES`, `POINT_CLOUD_RANGE` and the
  voxel settings of `DATA_CONFIG` (following `_BASE_CONFIG_`) -> a pc3d config (`dataset` + `model`).
- `convert_checkpoint(cfg, ckpt)`: OpenPCDet's `{'model_state': ...}` -> pc3d's Detector state_dict.

Widths that OpenPCDet hard-codes (VoxelResBackBone8x's 16/32/64/128) are read from the weights' shapes.
Where OpenPCDet computes something differently from pc3d's defaults, the converted config turns on the pc3d
option that computes what OpenPCDet computes (docs/reference_parity.md lists each one).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import yaml

from pc3d.compat import stages
from pc3d.compat.registry import (ConversionError, DetectorConverter, RefContext, StageConverter, convert_sections,
                                  family)
from pc3d.models.heads.decode import DecodeConfig

FAMILY = "openpcdet"
REPOS = ("open-mmlab/OpenPCDet",)
SECTIONS = ("VFE", "BACKBONE_3D", "MAP_TO_BEV", "BACKBONE_2D", "DENSE_HEAD")


def _shape(state: dict, key: str, who: str) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(f"{who}: weight {key!r} missing (keys present: {sorted(state)[:8]} ...)")
    return tuple(state[key].shape)


def _known(cfg: dict, allowed: set, who: str) -> None:
    unknown = sorted(k for k in cfg if k not in allowed)
    if unknown:
        raise ConversionError(f"{who}: option(s) {unknown} not supported by the converter (supported: {sorted(allowed)})")


# ---- MeanVFE -----------------------------------------------------------------------------------------------
def _mean_vfe_config(cfg, state, ctx):
    _known(cfg, {"NAME"}, "VFE MeanVFE")
    return {"vfe": {"type": "mean"}, "voxelization": {"mode": "hard", **ctx.voxelization}}


def _no_weights(state, cfg, ctx):
    if state:
        raise ConversionError(f"module has no weights in OpenPCDet but the checkpoint has {sorted(state)[:8]}")
    return {}


def _mean_vfe_run(module, inputs, cfg, ctx):
    voxelized = stages.hard_voxels(inputs, "MeanVFE")
    return {"voxel_features": module(voxelized), "voxel_coords": inputs["voxel_coords"]}


# ---- VoxelResBackBone8x ------------------------------------------------------------------------------------
def _spconv_weight(key: str, value: torch.Tensor) -> torch.Tensor:
    """spconv 1.x stored sparse-conv kernels as (kz, ky, kx, in, out), spconv 2.x (pc3d) as (out, kz, ky, kx, in);
    re-layout a 1.x kernel, recognised by where the known kernel size sits (as OpenPCDet's own loader does)."""
    if value.ndim != 5:
        return value
    kernel = (3, 1, 1) if key.startswith("conv_out.") else (3, 3, 3)
    if tuple(value.shape[1:4]) == kernel:
        return value
    if tuple(value.shape[:3]) == kernel:
        return value.permute(4, 0, 1, 2, 3).contiguous()
    raise ConversionError(f"BACKBONE_3D VoxelResBackBone8x: {key} has shape {tuple(value.shape)}, expected a "
                          f"{kernel} kernel as (out, {kernel}, in) (spconv 2) or ({kernel}, in, out) (spconv 1)")


def _res8x_config(cfg, state, ctx):
    _known(cfg, {"NAME", "USE_BIAS", "last_pad"}, "BACKBONE_3D VoxelResBackBone8x")
    if int(cfg.get("last_pad", 0)) != 0:
        raise ConversionError(f"BACKBONE_3D VoxelResBackBone8x: last_pad {cfg['last_pad']} not supported (only 0)")
    who = "BACKBONE_3D VoxelResBackBone8x"
    widths = []
    for key in ("conv_input.0.weight", "conv2.0.0.weight", "conv3.0.0.weight", "conv4.0.0.weight",
                "conv_out.0.weight"):
        w = _spconv_weight(key, state[key]) if key in state else None
        widths.append(_shape({key: w} if w is not None else {}, key, who)[0])
    use_bias = cfg.get("USE_BIAS", None)
    # OpenPCDet: SparseBasicBlock(bias=None) -> bias = (norm_fn is not None) = True
    block_bias = True if use_bias is None else bool(use_bias)
    return {"backbone_3d": {"type": "spconv_resnet", "channels": widths[:4], "out_channels": widths[4],
                            "blocks_per_stage": 2, "last_z_padding": 0, "z_down": True, "block_bias": block_bias,
                            "grid_pad": [1, 0, 0]}}


def _same_names(state, cfg, ctx):
    # pc3d's SparseResNetBackbone uses OpenPCDet's module names; only spconv 1.x kernels need a re-layout
    return {k: _spconv_weight(k, v) for k, v in state.items()}


def _res8x_run(module, inputs, cfg, ctx):
    stages.need_inputs(inputs, ("voxel_features", "voxel_coords"), "VoxelResBackBone8x")
    ctx.need("grid_size", who="VoxelResBackBone8x")
    voxels = stages.sparse_voxels(inputs["voxel_features"], inputs["voxel_coords"], ctx.pc3d_spatial_shape,
                                  stages.batch_size_of(inputs), ctx)
    out = module(voxels)
    return {"encoded_spconv_tensor.features": out.features, "encoded_spconv_tensor.indices": out.coords,
            "encoded_spconv_tensor.spatial_shape": torch.tensor(out.spatial_shape)}


# ---- HeightCompression -------------------------------------------------------------------------------------
def _height_config(cfg, state, ctx):
    _known(cfg, {"NAME", "NUM_BEV_FEATURES"}, "MAP_TO_BEV HeightCompression")
    return {"to_bev": {"type": "height_compression"}}


def _height_run(module, inputs, cfg, ctx):
    feats = inputs["encoded_spconv_tensor.features"]
    voxels = stages.sparse_voxels(feats, inputs["encoded_spconv_tensor.indices"],
                                  inputs["encoded_spconv_tensor.spatial_shape"].tolist(),
                                  stages.batch_size_of(inputs), ctx)
    return {"spatial_features": module(voxels)}


# ---- BaseBEVBackbone ---------------------------------------------------------------------------------------
def _bev_config(cfg, state, ctx):
    who = "BACKBONE_2D BaseBEVBackbone"
    _known(cfg, {"NAME", "LAYER_NUMS", "LAYER_STRIDES", "NUM_FILTERS", "UPSAMPLE_STRIDES", "NUM_UPSAMPLE_FILTERS",
                 "USE_CONV_FOR_NO_STRIDE"}, who)
    if cfg.get("USE_CONV_FOR_NO_STRIDE", False):
        raise ConversionError(f"{who}: USE_CONV_FOR_NO_STRIDE true is not supported (pc3d upsamples stride 1 with a "
                              "1x1 transposed conv, as OpenPCDet's default)")
    ups = list(cfg.get("UPSAMPLE_STRIDES") or [])
    if len(ups) > len(cfg.get("LAYER_NUMS") or []):
        raise ConversionError(f"{who}: an extra final deblock (more UPSAMPLE_STRIDES than LAYER_NUMS) is not supported")
    return {"backbone_2d": {"type": "second", "layer_nums": list(cfg["LAYER_NUMS"]),
                            "layer_strides": list(cfg["LAYER_STRIDES"]), "num_filters": list(cfg["NUM_FILTERS"]),
                            "upsample_strides": ups, "num_upsample_filters": list(cfg.get("NUM_UPSAMPLE_FILTERS") or []),
                            # NHWC convolutions on the CPU: same numbers up to rounding, ~1.2x faster
                            "channels_last": True}}


def _bev_weights(state, cfg, ctx):
    # OpenPCDet: blocks.i = [ZeroPad2d, Conv, BN, ReLU, (Conv, BN, ReLU) x n]  (ZeroPad + unpadded conv ==
    # pc3d's padding-1 conv); pc3d: blocks.i = [(Conv, BN, ReLU) x (n + 1)]. deblocks are named alike.
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) >= 4:
            index = int(parts[2]) - 1
            layer, kind = divmod(index, 3)
            if kind not in (0, 1):
                raise ConversionError(f"BACKBONE_2D BaseBEVBackbone: unexpected weight {key!r}")
            out[".".join(["blocks", parts[1], str(layer), str(kind)] + parts[3:])] = value
        elif parts[0] == "deblocks":
            out[key] = value
        else:
            raise ConversionError(f"BACKBONE_2D BaseBEVBackbone: weight {key!r} not mapped (blocks.*, deblocks.*)")
    return out


def _bev_run(module, inputs, cfg, ctx):
    stages.need_inputs(inputs, ("spatial_features",), "BaseBEVBackbone")
    return {"spatial_features_2d": module(inputs["spatial_features"].float())}


# ---- CenterHead --------------------------------------------------------------------------------------------
# OpenPCDet SeparateHead output name -> pc3d branch name
HEAD_NAMES = {"hm": "heatmap", "center": "offset", "center_z": "height", "dim": "size", "rot": "heading",
              "vel": "velocity", "iou": "iou"}
_HEAD_KEYS = {"NAME", "CLASS_AGNOSTIC", "CLASS_NAMES_EACH_HEAD", "SHARED_CONV_CHANNEL", "USE_BIAS_BEFORE_NORM",
              "NUM_HM_CONV", "SEPARATE_HEAD_CFG", "TARGET_ASSIGNER_CONFIG", "LOSS_CONFIG", "POST_PROCESSING",
              "BN_EPS", "BN_MOM",
              "IOU_REG_LOSS"}  # DSVT: an extra IoU-based box regression loss in training; inference is unaffected


def _head_config(cfg, state, ctx):
    who = "DENSE_HEAD CenterHead"
    _known(cfg, _HEAD_KEYS, who)
    ctx.need("class_names", who=who)
    head_dict = dict(cfg["SEPARATE_HEAD_CFG"]["HEAD_DICT"])
    unsupported = sorted(set(head_dict) - set(HEAD_NAMES))
    if unsupported:
        raise ConversionError(f"{who}: HEAD_DICT outputs {unsupported} not supported (supported: {sorted(HEAD_NAMES)})")
    for name, width in (("center", 2), ("center_z", 1), ("dim", 3), ("rot", 2)):
        if name not in head_dict or int(head_dict[name]["out_channels"]) != width:
            raise ConversionError(f"{who}: HEAD_DICT needs {name} with out_channels {width}, got {head_dict.get(name)}")
    num_convs = {int(v["num_conv"]) for v in head_dict.values()} | {int(cfg.get("NUM_HM_CONV", 2))}
    if len(num_convs) != 1:
        raise ConversionError(f"{who}: every branch must have the same num_conv (pc3d has one), got {sorted(num_convs)}")
    groups = [[n for n in g if n in ctx.class_names] for g in cfg["CLASS_NAMES_EACH_HEAD"]]
    head = {"type": "centerpoint", "class_groups": groups, "shared_channels": int(cfg["SHARED_CONV_CHANNEL"]),
            "num_conv": num_convs.pop(),
            "norm": {"eps": float(cfg.get("BN_EPS", 1e-5)), "momentum": float(cfg.get("BN_MOM", 0.1)),
                     "conv_bias": bool(cfg.get("USE_BIAS_BEFORE_NORM", False))},
            "regression": {"offset": 2, "height": 1, "size": 3, "heading": 2,
                           "velocity": int(head_dict["vel"]["out_channels"]) if "vel" in head_dict else 0}}
    target = cfg.get("TARGET_ASSIGNER_CONFIG", {})
    if "FEATURE_MAP_STRIDE" in target:
        head["feature_stride"] = int(target["FEATURE_MAP_STRIDE"])
    head["heatmap"] = {"min_radius": int(target.get("MIN_RADIUS", 2)),
                       "gaussian_overlap": float(target.get("GAUSSIAN_OVERLAP", 0.1)),
                       "max_objs": int(target.get("NUM_MAX_OBJS", 500))}
    weights = cfg.get("LOSS_CONFIG", {}).get("LOSS_WEIGHTS", {})
    if weights:
        code = list(weights.get("code_weights", []))
        if len(code) >= 8:  # OpenPCDet codes (.., cos, sin, ..); pc3d (.., sin, cos, ..)
            code[6], code[7] = code[7], code[6]
        head["loss_weights"] = {"heatmap": float(weights.get("cls_weight", 1.0)),
                                "regression": float(weights.get("loc_weight", 1.0)), **({"code_weights": code} if code else {})}
    post = cfg.get("POST_PROCESSING", {})
    if post.get("USE_IOU_TO_RECTIFY_SCORE", False):
        head["iou_rectification"] = [float(a) for a in post["IOU_RECTIFIER"]]
    elif "iou" in head_dict:
        raise ConversionError(f"{who}: an iou branch without USE_IOU_TO_RECTIFY_SCORE is not supported")
    head["decode"] = _decode_config(post, who)
    return {"head": head}


def _decode_config(post: dict, who: str) -> dict:
    nms = post.get("NMS_CONFIG", {})
    kind = nms.get("NMS_TYPE", "nms_gpu")
    max_obj = int(post.get("MAX_OBJ_PER_SAMPLE", 500))
    pre, post_max = nms.get("NMS_PRE_MAXSIZE", 4096), nms.get("NMS_POST_MAXSIZE", 500)
    if kind == "multi_class_nms":
        # DSVT's per-class NMS (lists per class): pc3d keeps one pre / post size, exact when no per-class cap
        # can bind, i.e. every cap >= the MAX_OBJ_PER_SAMPLE peaks a class group decodes to
        if min(int(v) for v in pre) < max_obj or min(int(v) for v in post_max) < max_obj:
            raise ConversionError(f"{who}: multi_class_nms with NMS_PRE_MAXSIZE {pre} / NMS_POST_MAXSIZE {post_max} "
                                  f"below MAX_OBJ_PER_SAMPLE {max_obj} is not supported (pc3d caps per class group)")
        pre, post_max = max_obj, max_obj
    decode = {"score_threshold": float(post.get("SCORE_THRESH", 0.1)),
              # OpenPCDet keeps the top MAX_OBJ_PER_SAMPLE peaks, then NMS takes its top NMS_PRE_MAXSIZE of those
              "pre_max_size": min(max_obj, int(pre)),
              "post_max_size": int(post_max),
              "post_center_range": [float(v) for v in post["POST_CENTER_LIMIT_RANGE"]],
              "size_clamp": None}
    if kind in ("nms_gpu", "nms_cpu"):
        decode["nms"] = {"type": "rotated", "iou_threshold": float(nms["NMS_THRESH"])}
    elif kind in ("class_specific_nms", "multi_class_nms"):
        thresh = nms["NMS_THRESH"]
        decode["nms"] = {"type": "rotated", "iou_threshold": [float(t) for t in thresh] if isinstance(thresh, (list, tuple)) else float(thresh)}
        if kind == "multi_class_nms":
            # DSVT's multi_class_nms hands mmdet3d's BEV NMS (x1, y1, x2, y2, pi/2 - yaw) without exchanging the
            # sizes: its IoU is that of boxes turned 90 degrees about their centres. pc3d's rotated NMS on
            # the boxes with length and width exchanged computes the same IoU (swap_dims: false = true IoU).
            decode["nms"]["swap_dims"] = True
    else:
        raise ConversionError(f"{who}: NMS_TYPE {kind!r} not supported (nms_gpu, nms_cpu, class_specific_nms, "
                              "multi_class_nms)")
    DecodeConfig.from_dict(decode)  # validate now: errors name the head, not a later build
    return decode


def _head_weights(state, cfg, ctx):
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "shared_conv":
            out["shared." + ".".join(parts[1:])] = value
            continue
        if parts[0] != "heads_list" or len(parts) < 4 or parts[2] not in HEAD_NAMES:
            raise ConversionError(f"DENSE_HEAD CenterHead: weight {key!r} not mapped (shared_conv.*, "
                                  f"heads_list.<i>.<{'|'.join(HEAD_NAMES)}>.*)")
        group, name, rest = parts[1], HEAD_NAMES[parts[2]], parts[3:]
        # OpenPCDet branch: [Sequential(Conv, BN, ReLU)] * (n - 1) + [Conv]; pc3d: flat [Conv, BN, ReLU] * (n - 1) + [Conv]
        if len(rest) >= 3 and rest[1] in ("0", "1"):
            index = int(rest[0]) * 3 + int(rest[1])
            tail = rest[2:]
        else:
            index = int(rest[0]) * 3
            tail = rest[1:]
            if name == "heading":  # OpenPCDet rot = (cos, sin); pc3d heading = (sin, cos)
                value = value[[1, 0]]
        out[".".join(["groups", group, name, str(index)] + tail)] = value
    return out


def _head_outputs(predictions) -> list[dict]:
    out = []
    for p in predictions:
        d = {"hm": p.heatmap, "center": p.offset, "center_z": p.height, "dim": p.size, "rot": p.heading.flip(1)}
        if p.velocity is not None:
            d["vel"] = p.velocity
        if p.iou is not None:
            d["iou"] = p.iou
        out.append(d)
    return out


def _head_run(module, inputs, cfg, ctx):
    stages.need_inputs(inputs, ("spatial_features_2d",), "CenterHead")
    return {"pred_dicts": _head_outputs(module(inputs["spatial_features_2d"].float()))}


# ---- CenterPoint (whole detector) --------------------------------------------------------------------------
def _box_dicts(boxes) -> list[dict]:
    return [{"pred_boxes": b.boxes.float(), "pred_scores": b.scores.float(), "pred_labels": b.labels.long() + 1}
            for b in boxes]  # OpenPCDet labels count from 1


def _detector_run(module, inputs, cfg, ctx):
    if "points" in inputs:  # dynamic-voxel detectors (DSVT's DynPillarVFE3D) read the raw points
        voxelized = module.voxelizer(inputs["points"].float(), stages.batch_size_of(inputs))
    else:
        voxelized = stages.hard_voxels(inputs, "CenterPoint")
    predictions = module.forward_voxels(voxelized)
    final = _box_dicts(module.decode(predictions, voxelized))
    # the decoded boxes before NMS (for fixtures whose NMS is not the reference's: NMS by pc3d on the CPU)
    with_nms = module.head.decode_cfg
    module.head.decode_cfg = dataclasses.replace(with_nms, nms_type="none")
    try:
        decoded = _box_dicts(module.decode(predictions, voxelized))
    finally:
        module.head.decode_cfg = with_nms
    return {"pred_dicts": _head_outputs(predictions), "final_box_dicts": final, "decoded_box_dicts": decoded}


CONVERTERS = {
    "MeanVFE": StageConverter("MeanVFE", "VFE", "vfe.", "vfe", _mean_vfe_config, _no_weights, stages.build_vfe,
                              _mean_vfe_run),
    "VoxelResBackBone8x": StageConverter("VoxelResBackBone8x", "BACKBONE_3D", "backbone_3d.", "backbone_3d",
                                         _res8x_config, _same_names, stages.build_backbone_3d, _res8x_run),
    "HeightCompression": StageConverter("HeightCompression", "MAP_TO_BEV", "map_to_bev_module.", "to_bev",
                                        _height_config, _no_weights, stages.build_to_bev, _height_run),
    "BaseBEVBackbone": StageConverter("BaseBEVBackbone", "BACKBONE_2D", "backbone_2d.", "backbone_2d", _bev_config,
                                      _bev_weights, stages.build_backbone_2d, _bev_run),
    "CenterHead": StageConverter("CenterHead", "DENSE_HEAD", "dense_head.", "head", _head_config, _head_weights,
                                 stages.build_head, _head_run),
}
DETECTORS = {"CenterPoint": DetectorConverter("CenterPoint", SECTIONS, stages.build_detector, _detector_run)}


# ---- whole YAML + checkpoint -------------------------------------------------------------------------------
DATASETS = {"NuScenesDataset": "nuscenes", "WaymoDataset": "waymo", "KittiDataset": "kitti"}
FEATURE_NAMES = {"timestamp": "time_lag"}  # OpenPCDet point feature name -> pc3d's


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"reference config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConversionError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a mapping at the top level")
    return data


def _resolve_base(cfg_path: Path, base: str) -> Path:
    """OpenPCDet resolves `_BASE_CONFIG_` from its tools/ folder; try the YAML's folder and its parents."""
    for parent in [cfg_path.parent, *cfg_path.parents]:
        candidate = parent / base
        if candidate.is_file():
            return candidate
    raise ConversionError(f"{cfg_path}: _BASE_CONFIG_ {base!r} not found next to the config or in a parent folder "
                          "(keep the OpenPCDet tools/cfgs layout)")


def _data_config(cfg_path: Path, data_cfg: dict) -> dict:
    data_cfg = dict(data_cfg or {})
    base = data_cfg.pop("_BASE_CONFIG_", None)
    if base:
        base_cfg = _data_config(_resolve_base(cfg_path, base), _read_yaml(_resolve_base(cfg_path, base)))
        return {**base_cfg, **data_cfg}
    return data_cfg


def reference_context(cfg_path, ref: dict | None = None) -> tuple[dict, RefContext, dict]:
    """Read a reference YAML -> (its MODEL dict, RefContext, pc3d dataset section)."""
    cfg_path = Path(cfg_path)
    ref = ref if ref is not None else _read_yaml(cfg_path)
    for key in ("MODEL", "CLASS_NAMES", "DATA_CONFIG"):
        if key not in ref:
            raise ConversionError(f"{cfg_path}: no {key} (an OpenPCDet config has MODEL, CLASS_NAMES, DATA_CONFIG)")
    data = _data_config(cfg_path, ref["DATA_CONFIG"])
    if "POINT_CLOUD_RANGE" not in data:
        raise ConversionError(f"{cfg_path}: DATA_CONFIG.POINT_CLOUD_RANGE missing")
    # DSVT voxelizes in its VFE and names the step transform_points_to_voxels_placeholder (VOXEL_SIZE only)
    voxel = next((p for p in data.get("DATA_PROCESSOR", []) if p.get("NAME") in
                  ("transform_points_to_voxels", "transform_points_to_voxels_placeholder")), None)
    if voxel is None:
        raise ConversionError(f"{cfg_path}: DATA_CONFIG.DATA_PROCESSOR has no transform_points_to_voxels "
                              "(its VOXEL_SIZE is needed)")
    max_voxels = voxel.get("MAX_NUMBER_OF_VOXELS", 150000)
    if isinstance(max_voxels, dict):
        max_voxels = max_voxels.get("test", max(max_voxels.values()))
    encoding = data.get("POINT_FEATURE_ENCODING", {})
    used = list(encoding.get("used_feature_list", ["x", "y", "z", "intensity"]))
    names = tuple(FEATURE_NAMES.get(n, n) for n in used)
    pr = tuple(float(v) for v in data["POINT_CLOUD_RANGE"])
    vs = tuple(float(v) for v in voxel["VOXEL_SIZE"])
    ctx = RefContext(class_names=tuple(ref["CLASS_NAMES"]), point_cloud_range=pr, voxel_size=vs,
                     grid_size=tuple(int(round((pr[i + 3] - pr[i]) / vs[i])) for i in range(3)),
                     num_point_features=len(names), point_feature_names=names,
                     voxelization={"max_points_per_voxel": int(voxel.get("MAX_POINTS_PER_VOXEL", 32)),
                                   "max_voxels": int(max_voxels)})
    kind = DATASETS.get(data.get("DATASET", ""), "info")  # info: pc3d info-file dataset
    dataset = {"type": kind, "root": f"data/{kind}", "class_names": list(ctx.class_names),
               "point_features": list(names), "point_range": list(pr)}
    return ref["MODEL"], ctx, dataset


def load_reference_state(ckpt_path) -> dict:
    """OpenPCDet checkpoint -> its `model_state` (a bare state_dict is accepted too)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConversionError(f"reference checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConversionError(f"{path}: cannot read as a torch checkpoint of tensors and plain values: "
                              f"{type(err).__name__}: {str(err)[:200]}") from err
    if isinstance(ckpt, dict) and "model_state" in ckpt:
        ckpt = ckpt["model_state"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ConversionError(f"{path}: expected OpenPCDet's {{'model_state': state_dict}} or a state_dict")
    return dict(ckpt)


def convert(cfg_path, ckpt_path=None) -> tuple[dict, dict | None]:
    """Reference YAML (+ checkpoint) -> (pc3d config {dataset, model}, pc3d state_dict or None)."""
    model, ctx, dataset = reference_context(cfg_path)
    name = model.get("NAME")
    if name not in DETECTORS:
        raise ConversionError(f"{cfg_path}: MODEL.NAME {name!r} not supported (supported: {sorted(DETECTORS)})")
    state = load_reference_state(ckpt_path) if ckpt_path else None
    if state is None:
        raise ConversionError("a checkpoint is needed: some widths are read from the weights' shapes")
    pc3d_model, pc3d_state = convert_sections(family(FAMILY), model, DETECTORS[name].sections, state, ctx)
    pc3d_model.setdefault("voxelization", {})
    pc3d_model["voxelization"] = {"voxel_size": list(ctx.voxel_size), **pc3d_model["voxelization"]}
    return {"dataset": dataset, "model": pc3d_model}, pc3d_state
