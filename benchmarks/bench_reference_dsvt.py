"""DSVT-P: the reference (Haiyang-W/DSVT, run from `--ref-root`) against pc3d, same weights, same real scan,
same thread count, stage by stage and for the whole network (points -> head maps; decoding and NMS excluded).

    python benchmarks/bench_reference_dsvt.py --ref-root /path/to/DSVT [--points scan.bin --dim 4] [--json]

The reference is imported from `--ref-root` without its CUDA extensions: only its CUDA-only ops are
replaced, by CPU equivalents written here (`ingroup_inds`: rank inside the group; `torch_scatter`'s
max / mean: `scatter_reduce`); no reference code is part of pc3d. The model is the official Waymo DSVT-P
(`dsvt_plain_1f_onestage.yaml`: VFE [192, 192], 4 blocks of set 36 in 12x12 pillars, BaseBEVResBackbone,
CenterHead with IoU branch) on the scan's KITTI-style front range `[0, -39.68, -3, 69.12, 39.68, 1]`
(0.32 m pillars, 216 x 248) so that one run takes seconds; `--width` narrows every layer.
Every parameter and buffer is drawn at random, the weights converted with pc3d.compat, and `identical`
is the parity check of each stage's output (<= 1e-4 after matching voxel rows by coordinates).
"""
from __future__ import annotations

import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import KITTI_SCAN, benchmark_parser, report  # noqa: E402

POINT_RANGE = [0.0, -39.68, -3.0, 69.12, 39.68, 1.0]
VOXEL_SIZE = [0.32, 0.32, 4.0]
CLASS_NAMES = ["Vehicle", "Pedestrian", "Cyclist"]


# ---------------------------------------------------------------- reference import (CPU stand-ins)
def _ingroup_inds(group_inds: torch.Tensor) -> torch.Tensor:
    """Rank of each element inside its group, in order of appearance (the CUDA op's atomic counter gives
    some permutation of it; DSVT re-sorts, so any permutation computes the same)."""
    g = group_inds.long()
    order = torch.sort(g, stable=True)[1]
    sorted_g = g[order]
    start = torch.ones(g.numel(), dtype=torch.bool)
    start[1:] = sorted_g[1:] != sorted_g[:-1]
    pos = torch.arange(g.numel())
    first = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0)[0]
    out = torch.empty_like(g)
    out[order] = pos - first
    return out


def _scatter(reduce):
    def fn(src, index, dim=0):
        out = src.new_zeros((int(index.max()) + 1,) + src.shape[1:])
        idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
        out = out.scatter_reduce(0, idx, src, reduce=reduce, include_self=False)
        return (out, None) if reduce == "amax" else out
    return fn


def import_reference(root: Path):
    """The reference's DynamicPillarVFE_3d, DSVT, PointPillarScatter3d, BaseBEVResBackbone and CenterHead."""
    if not (root / "pcdet/models/backbones_3d/dsvt.py").is_file():
        raise SystemExit(f"--ref-root {root}: not a Haiyang-W/DSVT checkout (pcdet/models/backbones_3d/dsvt.py missing)")
    sys.path.insert(0, str(root))
    torch.Tensor.cuda = lambda self, *a, **k: self  # the reference's constructors call .cuda()

    def module(name, path=None, **attrs):
        m = types.ModuleType(name)
        if path is not None:
            m.__path__ = [str(root / path)]
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    module("torch_scatter", scatter_max=_scatter("amax"), scatter_mean=_scatter("mean"))
    for name in ("pcdet", "pcdet.ops", "pcdet.ops.ingroup_inds", "pcdet.utils", "pcdet.models", "pcdet.models.model_utils",
                 "pcdet.models.model_utils.tensorrt_utils", "pcdet.models.backbones_3d", "pcdet.models.backbones_3d.vfe",
                 "pcdet.models.backbones_2d", "pcdet.models.backbones_2d.map_to_bev", "pcdet.models.dense_heads"):
        module(name, name.replace(".", "/"))
    module("pcdet.ops.ingroup_inds.ingroup_inds_op", ingroup_inds=_ingroup_inds)
    module("pcdet.models.model_utils.tensorrt_utils.trtwrapper", TRTWrapper=object)
    module("pcdet.models.model_utils.model_nms_utils")  # decoding is not timed
    module("pcdet.utils.loss_utils", FocalLossCenterNet=torch.nn.Module, RegLossCenterNet=torch.nn.Module)
    from pcdet.models.backbones_2d.base_bev_res_backbone import BaseBEVResBackbone
    from pcdet.models.backbones_2d.map_to_bev.pointpillar3d_scatter import PointPillarScatter3d
    from pcdet.models.backbones_3d.dsvt import DSVT, Stage_ReductionAtt_Block  # noqa: F401
    from pcdet.models.backbones_3d.vfe.dynamic_pillar_vfe import DynamicPillarVFE_3d
    from pcdet.models.dense_heads.center_head import CenterHead
    return DynamicPillarVFE_3d, DSVT, PointPillarScatter3d, BaseBEVResBackbone, CenterHead


class _Cfg(dict):
    """EasyDict stand-in (attribute access on nested dicts)."""

    def __init__(self, d):
        super().__init__({k: _Cfg(v) if isinstance(v, dict) else v for k, v in d.items()})

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err


def model_cfg(width: int) -> dict:
    """The official DSVT-P MODEL section, grid fitted to POINT_RANGE, widths scaled by width / 192."""
    def w(c):
        return max(8, int(round(c * width / 192 / 8)) * 8)
    nx, ny = (round((POINT_RANGE[a + 3] - POINT_RANGE[a]) / VOXEL_SIZE[a]) for a in range(2))
    d = w(192)
    return {
        "NAME": "CenterPoint",
        "VFE": {"NAME": "DynPillarVFE3D", "WITH_DISTANCE": False, "USE_ABSLOTE_XYZ": True, "USE_NORM": True,
                "NUM_FILTERS": [d, d]},
        "BACKBONE_3D": {"NAME": "DSVT", "INPUT_LAYER": {
            "sparse_shape": [nx, ny, 1], "downsample_stride": [], "d_model": [d], "set_info": [[36, 4]],
            "window_shape": [[12, 12, 1]], "hybrid_factor": [2, 2, 1], "shifts_list": [[[0, 0, 0], [6, 6, 0]]],
            "normalize_pos": False},
            "block_name": ["DSVTBlock"], "set_info": [[36, 4]], "d_model": [d], "nhead": [8],
            "dim_feedforward": [2 * d], "dropout": 0.0, "activation": "gelu", "output_shape": [nx, ny],
            "conv_out_channel": d},
        "MAP_TO_BEV": {"NAME": "PointPillarScatter3d", "INPUT_SHAPE": [nx, ny, 1], "NUM_BEV_FEATURES": d},
        "BACKBONE_2D": {"NAME": "BaseBEVResBackbone", "LAYER_NUMS": [1, 2, 2], "LAYER_STRIDES": [1, 2, 2],
                        "NUM_FILTERS": [w(128), w(128), w(256)], "UPSAMPLE_STRIDES": [1, 2, 4],
                        "NUM_UPSAMPLE_FILTERS": [w(128)] * 3},
        "DENSE_HEAD": {
            "NAME": "CenterHead", "CLASS_AGNOSTIC": False, "CLASS_NAMES_EACH_HEAD": [CLASS_NAMES],
            "SHARED_CONV_CHANNEL": w(64), "USE_BIAS_BEFORE_NORM": False, "NUM_HM_CONV": 2, "BN_EPS": 0.001,
            "BN_MOM": 0.01,
            "SEPARATE_HEAD_CFG": {"HEAD_ORDER": ["center", "center_z", "dim", "rot"], "HEAD_DICT": {
                "center": {"out_channels": 2, "num_conv": 2}, "center_z": {"out_channels": 1, "num_conv": 2},
                "dim": {"out_channels": 3, "num_conv": 2}, "rot": {"out_channels": 2, "num_conv": 2},
                "iou": {"out_channels": 1, "num_conv": 2}}},
            "TARGET_ASSIGNER_CONFIG": {"FEATURE_MAP_STRIDE": 1, "NUM_MAX_OBJS": 500, "GAUSSIAN_OVERLAP": 0.1,
                                       "MIN_RADIUS": 2},
            "LOSS_CONFIG": {"LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 2.0, "code_weights": [1.0] * 8}},
            "POST_PROCESSING": {
                "SCORE_THRESH": 0.1, "POST_CENTER_LIMIT_RANGE": [-80, -80, -10.0, 80, 80, 10.0],
                "MAX_OBJ_PER_SAMPLE": 500, "USE_IOU_TO_RECTIFY_SCORE": True, "IOU_RECTIFIER": [0.68, 0.71, 0.65],
                "NMS_CONFIG": {"NMS_TYPE": "multi_class_nms", "NMS_THRESH": [0.7, 0.6, 0.55],
                               "NMS_PRE_MAXSIZE": [4096] * 3, "NMS_POST_MAXSIZE": [500] * 3}}},
    }


def seed_everything(module: torch.nn.Module, seed: int) -> None:
    """Random parameters and buffers (norm weights, biases and running statistics too), variance-keeping."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                b = math.sqrt(3.0 / max(p[0].numel() if "in_proj" not in name else p.shape[1], 1))
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * b)
            elif name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.6 + 0.7)
            else:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.2)
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_((torch.rand(buf.shape, generator=g) * 2 - 1) * 0.3)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) * 1.5 + 0.5)


def time_pair(ref_fn, our_fn, repeat: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best (wall, process CPU) time of each function over `repeat` alternating calls, after one warm-up
    each: alternating keeps a machine whose load drifts from favouring either side. With one thread the CPU
    time is the work itself, less sensitive to other processes than wall time."""
    ref_fn()
    our_fn()
    best = [[float("inf")] * 2, [float("inf")] * 2]
    for _ in range(max(1, repeat)):
        for side, fn in enumerate((ref_fn, our_fn)):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            best[side] = [min(best[side][0], time.perf_counter() - w0), min(best[side][1], time.process_time() - c0)]
    return tuple(best[0]), tuple(best[1])


def _max_diff_rows(ref_coords, ref_feats, coords, feats) -> float:
    key = lambda c: ((c[:, 0].long() * 4096 + c[:, 1].long()) * 4096 + c[:, 2].long()) * 4096 + c[:, 3].long()  # noqa: E731
    ra, oa = torch.sort(key(ref_coords))
    rb, ob = torch.sort(key(coords))
    if ra.shape != rb.shape or not torch.equal(ra, rb):
        return math.inf
    return float((ref_feats[oa] - feats[ob]).abs().max())


def main(argv=None):
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--ref-root", type=Path, required=True, help="Haiyang-W/DSVT checkout")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch / numba threads")
    parser.add_argument("--width", type=int, default=192, help="DSVT d_model (the official 192); 2D widths scale")
    parser.add_argument("--cpu-time", action="store_true",
                        help="report process CPU time as `seconds` (use with --threads 1 on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import numba
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    from pc3d.compat.openpcdet import DETECTORS, FAMILY
    from pc3d.compat.registry import RefContext, convert_sections, family, load_into
    from pc3d.compat.stages import build_detector
    from pc3d.io.points import read_points  # noqa: F401  (same reader as the other benchmarks)
    from pc3d.structures import SparseVoxels

    path = args.points or KITTI_SCAN
    dim = args.dim or 4
    scan = np.fromfile(path, dtype=np.float32).reshape(-1, dim)[:, :4]
    keep = np.ones(len(scan), bool)
    for a in range(3):
        keep &= (scan[:, a] >= POINT_RANGE[a]) & (scan[:, a] < POINT_RANGE[a + 3])
    points = torch.from_numpy(np.concatenate([np.zeros((keep.sum(), 1), np.float32), scan[keep]], 1))

    Vfe, Dsvt, Scatter, Bev, Head = import_reference(args.ref_root)
    cfg = model_cfg(args.width)
    grid = [round((POINT_RANGE[a + 3] - POINT_RANGE[a]) / VOXEL_SIZE[a]) for a in range(3)]
    ref = {
        "vfe": Vfe(_Cfg(cfg["VFE"]), num_point_features=4, voxel_size=VOXEL_SIZE, grid_size=grid,
                   point_cloud_range=POINT_RANGE),
        "backbone_3d": Dsvt(_Cfg(cfg["BACKBONE_3D"])),
        "map_to_bev": Scatter(_Cfg(cfg["MAP_TO_BEV"]), grid_size=grid),
    }
    ref["backbone_2d"] = Bev(_Cfg(cfg["BACKBONE_2D"]), input_channels=cfg["MAP_TO_BEV"]["NUM_BEV_FEATURES"])
    ref["dense_head"] = Head(_Cfg(cfg["DENSE_HEAD"]), input_channels=ref["backbone_2d"].num_bev_features,
                             num_class=3, class_names=CLASS_NAMES, grid_size=np.array(grid),
                             point_cloud_range=np.array(POINT_RANGE), voxel_size=VOXEL_SIZE,
                             predict_boxes_when_training=False)
    state = {}
    for i, (prefix, m) in enumerate(ref.items()):
        seed_everything(m, i)
        m.eval()
        state.update({f"{prefix}.{k}": v for k, v in m.state_dict().items()})
    ctx = RefContext(class_names=tuple(CLASS_NAMES), point_cloud_range=tuple(POINT_RANGE),
                     voxel_size=tuple(VOXEL_SIZE), grid_size=tuple(grid), num_point_features=4,
                     point_feature_names=("x", "y", "z", "intensity"))
    pc3d_cfg, pc3d_state = convert_sections(family(FAMILY), cfg, DETECTORS["CenterPoint"].sections, state, ctx)
    model = build_detector(pc3d_cfg, ctx, {})
    load_into(model, pc3d_state, "bench")
    model.eval()

    # one pass of each, keeping every stage's input and output
    with torch.no_grad():
        bd = {"points": points.clone(), "batch_size": 1}
        ref["vfe"](bd)
        r_vfe = (bd["voxel_coords"].clone(), bd["voxel_features"].clone())
        ref["backbone_3d"](bd)
        r_3d = (bd["voxel_coords"].clone(), bd["voxel_features"].clone())
        ref["map_to_bev"](bd)
        r_bev_in = bd["spatial_features"].clone()
        ref["backbone_2d"](bd)
        r_2d = bd["spatial_features_2d"].clone()
        r_maps = [dict(d) for d in [ref["dense_head"].heads_list[0](ref["dense_head"].shared_conv(r_2d))]]
        voxelized = model.voxelizer(points, 1)
        feats = model.vfe(voxelized)
        voxels = SparseVoxels(feats, voxelized.coords, model.voxelizer.spatial_shape, 1, model.voxelizer.voxel_size,
                              model.voxelizer.point_range)
        out3d = model.backbone_3d(voxels)
        bev = model.to_bev(out3d)
        bev2d = model.backbone_2d(bev)
        maps = model.head(bev2d)
    diffs = {
        "vfe": _max_diff_rows(*r_vfe, voxelized.coords, feats),
        "backbone_3d": _max_diff_rows(*r_3d, out3d.coords, out3d.features),
        "map_to_bev": float((r_bev_in - bev).abs().max()),
        "backbone_2d": float((r_2d - bev2d).abs().max()),
        "dense_head": float((r_maps[0]["hm"] - maps[0].heatmap).abs().max()),
    }
    # inputs of each stage from the reference's own pass, so both sides time the same work
    r_in = {"backbone_3d": {"voxel_features": r_vfe[1], "voxel_coords": r_vfe[0].int(), "batch_size": 1},
            "map_to_bev": {"pillar_features": r_3d[1], "voxel_coords": r_3d[0], "batch_size": 1}}

    def ref_stage(name):
        if name == "vfe":
            return lambda: ref["vfe"]({"points": points.clone(), "batch_size": 1})
        if name in r_in:
            return lambda: ref[name](dict(r_in[name]))
        if name == "backbone_2d":
            return lambda: ref[name]({"spatial_features": r_bev_in})
        head = ref["dense_head"]
        return lambda: [h(head.shared_conv(r_2d)) for h in head.heads_list]

    def ref_whole():
        d = {"points": points.clone(), "batch_size": 1}
        for name in ("vfe", "backbone_3d", "map_to_bev", "backbone_2d"):
            ref[name](d)
        head = ref["dense_head"]
        return [h(head.shared_conv(d["spatial_features_2d"])) for h in head.heads_list]

    ours = {"vfe": lambda: model.vfe(model.voxelizer(points, 1)), "backbone_3d": lambda: model.backbone_3d(voxels),
            "map_to_bev": lambda: model.to_bev(out3d), "backbone_2d": lambda: model.backbone_2d(bev),
            "dense_head": lambda: model.head(bev2d)}
    label = f"DSVT-P {path.name} width {args.width} threads {args.threads}"
    extra = {"voxels": int(voxelized.coords.shape[0])}
    pick = 1 if args.cpu_time else 0
    extra["clock"] = "process CPU time" if args.cpu_time else "wall"
    with torch.no_grad():
        for name, fn in ours.items():
            t_ref, t_ours = time_pair(ref_stage(name), fn, args.repeat)
            report(f"{label}: {name}", t_ours[pick], "Haiyang-W/DSVT", t_ref[pick], diffs[name] <= 1e-4, args.json,
                   max_abs_diff=diffs[name], **extra)
        t_ref, t_ours = time_pair(ref_whole, lambda: model.forward_voxels(model.voxelizer(points, 1)), args.repeat)
        report(f"{label}: whole network", t_ours[pick], "Haiyang-W/DSVT", t_ref[pick], max(diffs.values()) <= 1e-4,
               args.json, max_abs_diff=max(diffs.values()), **extra)

if __name__ == "__main__":
    main()
