"""Official RoITr (haoyu94/RoITr) state_dict -> pc3d `RoITr` in reference mode.

`convert_state_dict(reference_sd)` renames every key by the table below and returns the pc3d state_dict
(keys under `reference_net.` and `reference_ot.`); a key no rule covers raises `UnmappedKeyError` naming it.
`model_config(reference_cfg)` turns the reference's own config keys into a `RoITrConfig` dict.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from pc3d.compat.registry import WHOLE_MODEL, ConversionError, StageConverter

FAMILY = "roitr"
REPOS = ("haoyu94/RoITr",)

# the reference stores one more Sinkhorn layer (`OT`) that its forward never calls
IGNORED_KEYS = ("OT.alpha",)

_LOCAL = [  # inside one LocalPPFTransformer: reference suffix -> pc3d suffix
    (r"embedding\.embedding\.div_term", "unused_sinusoid.div_term"),
    (r"embedding\.proj\.(weight|bias)", r"ppf_proj.\1"),
    (r"in_proj\.(weight|bias)", r"in_proj.\1"),
    (r"out_proj\.(weight|bias)", r"out_proj.\1"),
    (r"transformer\.attention\.proj_(q|k|v|p|vp)\.(weight|bias)", r"\1.\2"),
    (r"transformer\.(linear|norm)\.(weight|bias)", r"\1.\2"),
]
_DEC_LEVEL = {"4": 0, "3": 1, "2": 2, "1": 3}


class UnmappedKeyError(ConversionError):
    """A reference state_dict key that no conversion rule covers."""


def _local_suffix(rest: str, key: str) -> str:
    for pat, rep in _LOCAL:
        m = re.fullmatch(pat, rest)
        if m:
            return m.expand(rep)
    raise UnmappedKeyError(f"RoITr checkpoint key {key!r}: no pc3d parameter for it")


def _geo_layer_suffix(rest: str, key: str) -> str:
    table = [
        (r"attention\.attention\.proj_(q|k|v|p|vp)\.(weight|bias)", r"\1.\2"),
        (r"attention\.(linear|norm|pos_linear|pos_norm)\.(weight|bias)", r"\1.\2"),
        (r"output\.(expand|squeeze|norm)\.(weight|bias)", r"output.\1.\2"),
        (r"pos_proj\.(expand|squeeze|norm)\.(weight|bias)", r"pos_output.\1.\2"),
    ]
    for pat, rep in table:
        m = re.fullmatch(pat, rest)
        if m:
            return m.expand(rep)
    raise UnmappedKeyError(f"RoITr checkpoint key {key!r}: no pc3d parameter for it")


def convert_key(key: str) -> str | None:
    """pc3d key for one reference key (None for a key in IGNORED_KEYS)."""
    if key in IGNORED_KEYS:
        return None
    net = "reference_net."
    m = re.fullmatch(r"backbone\.enc(\d)\.0\.transformer\.(.+)", key)
    if m:
        return f"{net}down.{int(m.group(1)) - 1}.attention." + _local_suffix(m.group(2), key)
    m = re.fullmatch(r"backbone\.enc(\d)\.(\d+)\.transformer\.transformer\.(.+)", key)
    if m:
        return f"{net}enc_blocks.{int(m.group(1)) - 1}.{int(m.group(2)) - 1}.attention." + _local_suffix(m.group(3), key)
    m = re.fullmatch(r"backbone\.enc(\d)\.(\d+)\.bn2\.(weight|bias)", key)
    if m:
        return f"{net}enc_blocks.{int(m.group(1)) - 1}.{int(m.group(2)) - 1}.norm.{m.group(3)}"
    m = re.fullmatch(r"backbone\.dec(\d)\.1\.transformer\.transformer\.(.+)", key)
    if m and m.group(1) in _DEC_LEVEL:
        return f"{net}dec_blocks.{_DEC_LEVEL[m.group(1)]}.attention." + _local_suffix(m.group(2), key)
    m = re.fullmatch(r"backbone\.dec(\d)\.1\.bn2\.(weight|bias)", key)
    if m and m.group(1) in _DEC_LEVEL:
        return f"{net}dec_blocks.{_DEC_LEVEL[m.group(1)]}.norm.{m.group(2)}"
    m = re.fullmatch(r"backbone\.dec(\d)\.0\.linear([12])\.(\d)\.(weight|bias)", key)
    if m and m.group(1) in _DEC_LEVEL:
        branch = "mix" if m.group(2) == "1" else "coarse"
        return f"{net}up.{_DEC_LEVEL[m.group(1)]}.{branch}.{m.group(3)}.{m.group(4)}"
    m = re.fullmatch(r"backbone\.global_transformer\.embedding\.embedding\.div_term", key)
    if m:
        return f"{net}global_transformer.embedding.sinusoid.div_term"
    m = re.fullmatch(r"backbone\.global_transformer\.embedding\.(proj_d|proj_a)\.(weight|bias)", key)
    if m:
        return f"{net}global_transformer.embedding.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"backbone\.global_transformer\.(in_proj|out_proj)\.(weight|bias)", key)
    if m:
        return f"{net}global_transformer.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"backbone\.global_transformer\.transformer\.layers\.(\d+)\.(.+)", key)
    if m:
        return f"{net}global_transformer.layers.{m.group(1)}." + _geo_layer_suffix(m.group(2), key)
    m = re.fullmatch(r"backbone\.occ_proj\.(weight|bias)", key)
    if m:
        return f"{net}occ_proj.{m.group(1)}"
    m = re.fullmatch(r"(coarse_proj|fine_proj)\.(weight|bias)", key)
    if m:
        return f"{net}{m.group(1)}.{m.group(2)}"
    if key == "optimal_transport.alpha":
        return "reference_ot.alpha"
    raise UnmappedKeyError(f"RoITr checkpoint key {key!r}: no pc3d parameter for it")


def convert_state_dict(reference_sd: dict) -> dict:
    """Reference state_dict (optionally wrapped as `{"state_dict": ...}`, keys optionally prefixed `module.`)
    -> pc3d state_dict."""
    if "state_dict" in reference_sd and isinstance(reference_sd["state_dict"], dict):
        reference_sd = reference_sd["state_dict"]
    out = {}
    for key, value in reference_sd.items():
        if not isinstance(value, torch.Tensor):
            raise UnmappedKeyError(f"RoITr checkpoint key {key!r}: expected a tensor, got {type(value).__name__}")
        new = convert_key(key[len("module."):] if key.startswith("module.") else key)
        if new is not None:
            out[new] = value
    return out


def width_factor(reference_sd: dict) -> float:
    """The reference's width multiplier (1 for the 3DMatch models), read off the coarse projection."""
    sd = reference_sd.get("state_dict", reference_sd)
    weight = sd.get("coarse_proj.weight", sd.get("module.coarse_proj.weight"))
    if weight is None:
        raise UnmappedKeyError("RoITr checkpoint: 'coarse_proj.weight' missing, cannot tell the model width")
    return weight.shape[0] / 256.0


def model_config(reference_cfg: dict, factor: float = 1.0) -> dict:
    """pc3d `RoITrConfig` fields from the reference's own config keys (flat, as its `main.py` builds them)."""
    cfg = dict(reference_cfg)
    blocks = cfg.get("transformer_architecture", ["self", "cross"] * 3)
    bad = [b for b in blocks if b not in ("self", "cross")]
    if bad:
        raise ValueError(f"transformer_architecture: unknown block types {bad}")
    if cfg.get("fine_matching_use_dustbin", False) or cfg.get("fine_matching_use_global_score", False):
        raise ValueError("fine_matching_use_dustbin / fine_matching_use_global_score: only False is reproduced "
                         "(the reference's own test configs)")
    if cfg.get("benchmark", "3DMatch") not in ("3DMatch", "3DLoMatch"):
        raise ValueError(f"benchmark: {cfg.get('benchmark')!r} uses the 4DMatch matcher, not reproduced")
    return {
        "architecture": "reference",
        "width_factor": float(factor),
        "reference_blocks": list(blocks),
        "num_superpoint_matches": int(cfg.get("num_est_coarse_corr", 256)),
        "patch_size": int(cfg.get("point_per_patch", 64)),
        "mutual_k": int(cfg.get("fine_matching_topk", 3)),
        "reference_mutual": bool(cfg.get("fine_matching_mutual", True)),
        "confidence_threshold": float(cfg.get("fine_matching_confidence_threshold", 0.05)),
    }


def flatten_reference_config(cfg: dict) -> dict:
    """The reference's YAML has sections (misc, model, coarse_matching, ...); its `load_config` merges their
    keys into one flat dict, and so does this."""
    flat = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def convert(cfg_path, ckpt_path) -> tuple[dict, dict]:
    """Reference YAML + checkpoint -> (pc3d config with a `model` section, pc3d RoITr state_dict)."""
    import yaml

    cfg_path, ckpt_path = Path(cfg_path), Path(ckpt_path)
    for path, what in ((cfg_path, "--cfg"), (ckpt_path, "--ckpt")):
        if not path.is_file():
            raise ConversionError(f"{what}: file not found: {path}")
    raw = yaml.safe_load(cfg_path.read_text())
    if not isinstance(raw, dict):
        raise ConversionError(f"{cfg_path}: not a RoITr YAML (expected sections such as model, fine_matching)")
    payload = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise ConversionError(f"{ckpt_path}: expected a state_dict or {{'state_dict': ...}}, got {type(payload).__name__}")
    state = payload.get("state_dict", payload)
    fields = model_config(flatten_reference_config(raw), width_factor(state))
    # the reference loader keeps at most 30000 points and feeds them all
    fields["max_input_points"] = 30000
    return {"model": {"type": "roitr", **fields}}, convert_state_dict(state)


def write(cfg_path, ckpt_path, out) -> dict:
    """`convert`, then `out/config.yaml` and `out/model.pth` in the RoITr checkpoint format that
    `tools/register.py --ckpt` and `RoITrRegistration.from_checkpoint` read."""
    import yaml

    from pc3d.models.registration.roitr import RoITr, RoITrConfig, save_checkpoint

    cfg, state = convert(cfg_path, ckpt_path)
    fields = {k: v for k, v in cfg["model"].items() if k != "type"}
    model = RoITr(RoITrConfig(**fields))
    from pc3d.compat.registry import load_into
    load_into(model, state, f"{ckpt_path} (RoITr)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"name": f"RoITr converted from {Path(cfg_path).name}",
                                                     **cfg}, sort_keys=False))
    save_checkpoint(model, out / "model.pth", {"converted_from": {"source": "roitr", "config": str(cfg_path),
                                                                   "checkpoint": str(ckpt_path)}})
    return {"config": str(out / "config.yaml"), "checkpoint": str(out / "model.pth"), "tensors": len(state)}


# --- --verify-fixture: the whole reference model (RIGA_v2) is one stage --------------------------------

def _fixture_config(model_cfg: dict, state: dict, ctx) -> dict:
    return model_config({k: v for k, v in model_cfg.items() if k != "type"}, width_factor(state))


def _fixture_weights(state: dict, cfg: dict, ctx) -> dict:
    return convert_state_dict(state)


def _build(cfg: dict, ctx, inputs: dict):
    from pc3d.models.registration.roitr import RoITr, RoITrConfig

    return RoITr(RoITrConfig(**cfg))


def _run(model, inputs: dict, cfg: dict, ctx) -> dict:
    """pc3d outputs under the reference's names (RoITr's `tgt` is pc3d's `ref`)."""
    src, ref = model(inputs["src_points"], inputs["src_normals"], inputs["tgt_points"], inputs["tgt_normals"])
    matches = model.match((src, ref))
    transform, _ = model.estimate(matches, "reference_ransac")
    out = {"src_nodes": src.nodes, "tgt_nodes": ref.nodes, "src_node_feats": src.node_feats,
           "tgt_node_feats": ref.node_feats, "src_point_feats": src.point_feats, "tgt_point_feats": ref.point_feats,
           "src_node_corr_indices": matches["superpoint_pairs"][:, 0],
           "tgt_node_corr_indices": matches["superpoint_pairs"][:, 1],
           "src_corr_points": matches["src_points"], "tgt_corr_points": matches["ref_points"],
           "corr_scores": matches["scores"], "ransac_transform": torch.from_numpy(transform)}
    for side, feats in (("src", src), ("tgt", ref)):
        out[f"stage/global/{side}"] = feats.global_feats
        for lvl, level in enumerate(feats.levels, start=1):
            out[f"stage/enc{lvl}/{side}/feats"] = level["feats"]
            out[f"stage/enc{lvl}/{side}/knn"] = level["knn"]
            if lvl > 1:
                out[f"stage/enc{lvl}/{side}/fps"] = level["fps"]
    return out


CONVERTERS = {"RIGA_v2": StageConverter("RIGA_v2", "model", "", WHOLE_MODEL, _fixture_config, _fixture_weights,
                                        _build, _run)}
