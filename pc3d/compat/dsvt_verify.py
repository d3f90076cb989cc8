"""Run pc3d on a DSVT reference fixture (tests/fixtures/reference/dsvt_*.pt) and measure the difference.

`verify_fixture(fixture) -> list[(output name, max abs difference)]`: builds the pc3d module for the
fixture's section from the converted config, loads the converted weights, runs it on `inputs` and
compares with `outputs` (voxel rows matched by their (batch, z, y, x) coordinates; boxes matched after
sorting by score). A structural mismatch (other voxels, another number of boxes) is reported as `inf`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import torch

from pc3d.compat import dsvt as conv

POINT_FEATURES = ("x", "y", "z", "intensity", "elongation")


def stage_of(fixture: Mapping) -> str:
    name = fixture["model_cfg"].get("NAME")
    table = {"DynPillarVFE3D": "vfe", "DSVT": "backbone_3d", "PointPillarScatter3d": "map_to_bev",
             "BaseBEVResBackbone": "backbone_2d", "CenterHead": "dense_head"}
    if name in table:
        return table[name]
    if "VFE" in fixture["model_cfg"] and "DENSE_HEAD" in fixture["model_cfg"]:
        return "detector"
    raise conv.ConversionError(f"fixture model_cfg NAME {name!r}: not a DSVT section "
                               f"(supported: {sorted(table)} or a whole MODEL)")


def _strip(state: Mapping, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def _load(module: torch.nn.Module, converted: Mapping, prefix: str, where: str) -> torch.nn.Module:
    sub = _strip(converted, prefix)
    conv.check_against(module, sub, where)
    module.load_state_dict(sub)
    return module.eval()


def _match_rows(ref_coords, ref_feats, coords, feats) -> float:
    """Max |difference| of voxel features, rows matched by coordinates; inf if the voxel sets differ."""
    if ref_coords.shape[0] != coords.shape[0]:
        return math.inf
    scale = torch.tensor([1 << 48, 1 << 32, 1 << 16, 1], dtype=torch.int64)
    ref_key = (ref_coords.long() * scale).sum(1)
    key = (coords.long() * scale).sum(1)
    ref_sorted, ref_order = torch.sort(ref_key)
    our_sorted, our_order = torch.sort(key)
    if not torch.equal(ref_sorted, our_sorted):
        return math.inf
    return _diff(ref_feats[ref_order], feats[our_order])


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


def _boxes_diff(ref: Mapping, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, float]]:
    """Reference box dict (1-based labels) vs pc3d boxes (0-based labels), both sorted by score."""
    ro = torch.argsort(ref["pred_scores"], descending=True, stable=True)
    oo = torch.argsort(scores, descending=True, stable=True)
    label_ok = (ref["pred_labels"].shape == labels.shape and
                torch.equal(ref["pred_labels"][ro].long() - 1, labels[oo].long()))
    return [("pred_boxes", _diff(ref["pred_boxes"][ro], boxes[oo])),
            ("pred_scores", _diff(ref["pred_scores"][ro], scores[oo])),
            ("pred_labels", 0.0 if label_ok else math.inf)]


def _head_maps(predictions) -> list[dict]:
    out = []
    for p in predictions:
        d = {"hm": p.heatmap, "center": p.offset, "center_z": p.height, "dim": p.size,
             "rot": p.heading[:, [1, 0]]}  # pc3d (sin, cos) -> reference (cos, sin)
        if p.velocity is not None:
            d["vel"] = p.velocity
        if p.iou is not None:
            d["iou"] = p.iou
        out.append(d)
    return out


def _no_nms(head):
    head.decode_cfg = dataclasses.replace(head.decode_cfg, nms_type="none")
    return head


@torch.no_grad()
def verify_fixture(fx: Mapping) -> list[tuple[str, float]]:
    from pc3d.models.backbones_2d import build_backbone_2d
    from pc3d.models.backbones_3d import build_backbone_3d
    from pc3d.models.heads.centerpoint import build_head
    from pc3d.models.to_bev import build_to_bev
    from pc3d.models.vfe import Voxelizer, build_vfe
    from pc3d.structures import SparseVoxels

    stage = stage_of(fx)
    cfg, inputs, outputs = fx["model_cfg"], fx["inputs"], fx["outputs"]
    vs = [float(v) for v in fx["voxel_size"]]
    pcr = [float(v) for v in fx["point_cloud_range"]]
    nx, ny, nz = conv.grid_size(pcr, vs)
    results: list[tuple[str, float]] = []
    if stage == "detector":
        return _verify_detector(fx)
    converted = conv.convert_state_dict(fx["state_dict"], sections=(stage,)) if fx["state_dict"] else {}
    if stage == "vfe":
        vfe = _load(build_vfe(conv.vfe_section(cfg, vs, pcr), int(fx["num_point_features"]), vs, pcr, "dynamic"),
                    converted, "vfe", "vfe")
        voxelized = Voxelizer(vs, pcr, "dynamic")(inputs["points"], int(inputs["batch_size"]))
        feats = vfe(voxelized)
        results.append(("voxel_features", _match_rows(outputs["voxel_coords"], outputs["voxel_features"],
                                                      voxelized.coords, feats)))
    elif stage == "backbone_3d":
        section = conv.backbone_3d_section(cfg, int(fx["input_channels"]))
        net = _load(build_backbone_3d(section), converted, "backbone_3d", "backbone_3d")
        sx, sy, sz = (int(v) for v in cfg["INPUT_LAYER"]["sparse_shape"])
        voxels = SparseVoxels(inputs["voxel_features"], inputs["voxel_coords"].int(), (sz, sy, sx),
                              int(inputs["batch_size"]), tuple(vs), tuple(pcr))
        out = net(voxels)
        results.append(("voxel_features", _match_rows(outputs["voxel_coords"], outputs["voxel_features"],
                                                      out.coords, out.features)))
        same_order = torch.equal(out.coords.long(), outputs["voxel_coords"].long())
        results.append(("voxel_coords (order)", 0.0 if same_order else math.inf))
    elif stage == "map_to_bev":
        bx, by, bz = (int(v) for v in cfg["INPUT_SHAPE"])
        feats = inputs["pillar_features"]
        to_bev = build_to_bev(conv.map_to_bev_section(cfg, feats.shape[1]), feats.shape[1], (bz, by, bx))
        voxels = SparseVoxels(feats, inputs["voxel_coords"].int(), (bz, by, bx), int(inputs["batch_size"]))
        results.append(("spatial_features", _diff(outputs["spatial_features"], to_bev(voxels))))
    elif stage == "backbone_2d":
        net = _load(build_backbone_2d(conv.backbone_2d_section(cfg), int(fx["input_channels"])), converted,
                    "backbone_2d", "backbone_2d")
        results.append(("spatial_features_2d", _diff(outputs["spatial_features_2d"], net(inputs["spatial_features"]))))
    elif stage == "dense_head":
        names = list(fx["class_names"])
        section = conv.dense_head_section(cfg, names)
        stride = section["feature_stride"]
        head = _load(build_head(section, int(fx["input_channels"]), names, vs, pcr, stride), converted, "head",
                     "dense_head")
        preds = head(inputs["spatial_features_2d"])
        for g, (ref, ours) in enumerate(zip(outputs["pred_dicts"], _head_maps(preds))):
            if set(ref) != set(ours):
                results.append((f"pred_dicts[{g}] keys", math.inf))
            for key in ref:
                results.append((f"pred_dicts[{g}].{key}", _diff(ref[key], ours.get(key, torch.empty(0)))))
        for b, boxes in enumerate(_no_nms(head).decode(preds)):
            for name, d in _boxes_diff(outputs["decoded_box_dicts"][b], boxes.boxes, boxes.scores, boxes.labels):
                results.append((f"decoded_box_dicts[{b}].{name}", d))
    return results


def _verify_detector(fx: Mapping) -> list[tuple[str, float]]:
    from pc3d.models.detector import Detector
    from pc3d.structures import Batch

    names = list(fx["class_names"])
    features = list(POINT_FEATURES[:int(fx["num_point_features"])])
    cfg = conv.convert_config(fx["model_cfg"], names, fx["point_cloud_range"], fx["voxel_size"], features)
    model = Detector.from_config(cfg)
    converted = conv.convert_state_dict(fx["state_dict"])
    conv.check_against(model, converted, "detector")
    model.load_state_dict(converted)
    model.eval()
    points = fx["inputs"]["points"]
    batch_size = int(fx["inputs"]["batch_size"])
    batch = Batch(points, tuple(features), batch_size, [None] * batch_size, [str(i) for i in range(batch_size)],
                  [{} for _ in range(batch_size)])
    results = []
    with torch.no_grad():
        voxelized = model.voxelize(batch)
        predictions = model.forward_voxels(voxelized)
        final = model.decode(predictions, voxelized)
        model.head = _no_nms(model.head)
        decoded = model.decode(predictions, voxelized)
    for key, boxes_list in (("decoded_box_dicts", decoded), ("final_box_dicts", final)):
        for b, boxes in enumerate(boxes_list):
            for name, d in _boxes_diff(fx["outputs"][key][b], boxes.boxes, boxes.scores, boxes.labels):
                results.append((f"{key}[{b}].{name}", d))
    return results
