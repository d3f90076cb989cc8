"""FlatFormer (mit-han-lab/flatformer, an mmdet3d fork) -> pc3d, family "flatformer".

FlatFormer is a *middle encoder* there (`model.middle_encoder`, checkpoint keys `middle_encoder.`): it
takes pillar features + (batch, z, y, x) coordinates and returns the dense BEV map `(B, C, ny, nx)`. In
pc3d that is the `flatformer` 3D backbone followed by the `scatter` BEV stage. The converted backbone turns
on the options that compute what the reference computes (docs/reference_parity.md, "FlatFormer"):
repeated tail slots are attended to (`mask_padding: false`) and `normalize_pos` uses the reference's pi.

`convert(cfg.py, ckpt)` reads an mmdet3d Python config (module-level literal assignments and `dict(...)`
calls only; nothing is executed) and an mmdet3d checkpoint `{'state_dict': ...}`.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Mapping

import torch

from pc3d.compat import stages
from pc3d.compat.dsvt import _attention_rules, map_keys
from pc3d.compat.registry import ConversionError, StageConverter

FAMILY = "flatformer"
REPOS = ("mit-han-lab/flatformer",)
REFERENCE_PI = 3.1415  # the reference's normalize_pos constant
PREFIX = "middle_encoder."
# the reference constructor's defaults (mmdet3d merges a config dict over them)
DEFAULTS = {"in_channels": 128, "num_heads": 8, "num_blocks": 2, "activation": "gelu", "window_shape": (9, 9, 1),
            "sparse_shape": (468, 468, 1), "output_shape": (468, 468), "pos_temperature": 10000,
            "normalize_pos": False, "group_size": 69}

_LAYER = r"block_list\.(\d+)\.block\.(\d+)\."
RULES = [
    *_attention_rules(_LAYER + r"attn\.attn\.", r"blocks.\1.\2.attn."),
    (_LAYER + r"(fc[12])\.(weight|bias)", r"blocks.\1.\2.ffn.\3.\4", None),
    (_LAYER + r"(norm[12])\.(weight|bias)", r"blocks.\1.\2.\3.\4", None),
]


def backbone_3d_section(section: Mapping) -> dict:
    """The reference `middle_encoder` dict -> pc3d `backbone_3d` (type flatformer)."""
    if section.get("type") != "FlatFormer":
        raise ConversionError(f"middle_encoder.type {section.get('type')!r}: only 'FlatFormer' is supported")
    unknown = sorted(set(section) - set(DEFAULTS) - {"type"})
    if unknown:
        raise ConversionError(f"middle_encoder: unknown FlatFormer arguments {unknown} (supported: {sorted(DEFAULTS)})")
    cfg = {**DEFAULTS, **section}
    if cfg["activation"] not in ("gelu", "relu"):
        raise ConversionError(f"middle_encoder.activation {cfg['activation']!r}: supported 'gelu', 'relu' "
                              "('glu' halves the width and cannot run in the reference either)")
    window = [int(v) for v in cfg["window_shape"]]
    if len(window) != 3 or window[2] != 1:
        raise ConversionError(f"middle_encoder.window_shape {window}: expected (wx, wy, 1)")
    sx, sy, sz = (int(v) for v in cfg["sparse_shape"])
    if sz != 1:
        raise ConversionError(f"middle_encoder.sparse_shape {cfg['sparse_shape']}: FlatFormer is a pillar model (z = 1)")
    if [int(v) for v in cfg["output_shape"]] != [sy, sx]:
        raise ConversionError(f"middle_encoder.output_shape {cfg['output_shape']} must be (ny, nx) = ({sy}, {sx}) of "
                              f"sparse_shape {cfg['sparse_shape']}: pc3d scatters into the voxel grid")
    dim = int(cfg["in_channels"])
    return {"type": "flatformer", "in_channels": dim, "dim": dim, "window_shape": window[:2],
            "group_size": int(cfg["group_size"]), "num_blocks": int(cfg["num_blocks"]),
            "num_heads": int(cfg["num_heads"]), "ffn_ratio": 2,  # hard-coded 2 * in_channels in the reference
            "activation": cfg["activation"], "pos_temperature": float(cfg["pos_temperature"]),
            "normalize_pos": bool(cfg["normalize_pos"]), "mask_padding": False, "pos_pi": REFERENCE_PI}


def sparse_shape_zyx(section: Mapping) -> tuple[int, int, int]:
    sx, sy, sz = (int(v) for v in {**DEFAULTS, **section}["sparse_shape"])
    return sz, sy, sx


def _config(cfg, state, ctx):
    out = {"backbone_3d": backbone_3d_section(cfg),
           "to_bev": {"type": "scatter", "spatial_shape": list(sparse_shape_zyx(cfg))}}
    if ctx.grid_size is not None and tuple(reversed(ctx.grid_size)) != sparse_shape_zyx(cfg):
        raise ConversionError(f"middle_encoder.sparse_shape {cfg.get('sparse_shape')} does not match the voxel grid "
                              f"{list(ctx.grid_size)} of point_cloud_range / voxel_size")
    return out


def _weights(state, cfg, ctx):
    return map_keys(state, RULES, "middle_encoder FlatFormer")


def _build(cfg, ctx, inputs):
    from pc3d.models.backbones_3d import build_backbone_3d
    return build_backbone_3d(cfg["backbone_3d"])


def _run(module, inputs, cfg, ctx):
    from pc3d.models.to_bev import build_to_bev
    stages.need_inputs(inputs, ("voxel_features", "voxel_coords"), "FlatFormer")
    shape = tuple(cfg["to_bev"]["spatial_shape"])
    voxels = stages.sparse_voxels(inputs["voxel_features"], inputs["voxel_coords"], shape,
                                  stages.batch_size_of(inputs), ctx)
    out = module(voxels)
    return {"spatial_features": build_to_bev(cfg["to_bev"], out.features.shape[1], shape)(out)}


CONVERTERS = {"FlatFormer": StageConverter("FlatFormer", "middle_encoder", PREFIX, "backbone_3d", _config, _weights,
                                           _build, _run)}


# ---------------------------------------------------------------- mmdet3d config / checkpoint files
def _literal(node: ast.AST, names: dict):
    """Evaluate a config expression made of literals, names bound earlier, `dict(...)` calls, indexing and
    arithmetic (what mmdet3d configs write); anything else raises and the assignment is skipped."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value, names) for kw in node.keywords}
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(f"name {node.id!r} is not defined earlier in the config")
        return names[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, names) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k, names): _literal(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Subscript):  # e.g. voxel_size[:2]
        value = _literal(node.value, names)
        if isinstance(node.slice, ast.Slice):
            bounds = [None if b is None else _literal(b, names) for b in (node.slice.lower, node.slice.upper,
                                                                           node.slice.step)]
            return value[slice(*bounds)]
        return value[_literal(node.slice, names)]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, names)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_literal(node.left, names), _literal(node.right, names))
    return ast.literal_eval(node)


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b}


def read_config(path: Path) -> dict:
    """Module-level assignments of an mmdet3d `.py` config that are plain literals (others are skipped)."""
    try:
        tree = ast.parse(Path(path).read_text(), filename=str(path))
    except (OSError, SyntaxError) as err:
        raise ConversionError(f"--cfg {path}: cannot read an mmdet3d Python config ({err})") from None
    names: dict = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                names[stmt.targets[0].id] = _literal(stmt.value, names)
            except (ValueError, TypeError, SyntaxError, KeyError, IndexError, ZeroDivisionError):
                continue  # computed values (e.g. pipelines built with code) are not needed here
    if not isinstance(names.get("model"), dict):
        raise ConversionError(f"--cfg {path}: no literal `model = dict(...)` found")
    return names


def read_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one clear error
        raise ConversionError(f"--ckpt {path}: cannot read a torch checkpoint ({type(err).__name__}: {err})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConversionError(f"--ckpt {path}: expected mmdet3d's {{'state_dict': ...}}")
    return state


def convert_middle_encoder(model: Mapping, state: Mapping) -> tuple[dict, dict]:
    """mmdet3d `model` dict + full checkpoint state -> (pc3d backbone_3d/to_bev sections, backbone_3d state)."""
    section = model.get("middle_encoder")
    if not isinstance(section, dict):
        raise ConversionError("model.middle_encoder: missing (FlatFormer configs have one)")
    part = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    cfg = _config(section, part, _no_ctx())
    return cfg, {f"backbone_3d.{k}": v for k, v in _weights(part, cfg, None).items()}


def _no_ctx():
    from pc3d.compat.registry import RefContext
    return RefContext()


# The rest of FlatFormer's detector (mmdet3d DynamicVFE, SECOND, SECONDFPN, CenterHead) has no converter yet.
SUPPORTED_PARTS = ("middle_encoder",)


def convert(cfg_path: Path, ckpt_path: Path) -> tuple[dict, dict]:
    """`--from flatformer`: mmdet3d config + checkpoint -> (pc3d config, pc3d state)."""
    model = read_config(cfg_path)["model"]
    state = read_checkpoint(ckpt_path)
    cfg, out = convert_middle_encoder(model, state)
    others = sorted(k for k, v in model.items() if isinstance(v, dict) and "type" in v and k not in SUPPORTED_PARTS)
    if others:
        types = {k: model[k]["type"] for k in others}
        raise ConversionError(f"{cfg_path}: the FlatFormer middle_encoder converts, but model parts {types} have no "
                              f"pc3d converter yet (supported: {list(SUPPORTED_PARTS)}); use "
                              "pc3d.compat.flatformer.convert_middle_encoder for the backbone alone")
    return cfg, out
