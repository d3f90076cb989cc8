"""pc3d vs the reference code, same weights, same real scan, same thread count: OpenPCDet CenterPoint-voxel.

    python benchmarks/bench_reference.py --ref-root /path/to/OpenPCDet [--model nuscenes|waymo]
        [--points FILE --dim N] [--threads N] [--repeat K] [--json]

Without --ref-root it prints why and exits 0 (the reference is not part of pc3d). The reference modules are
imported from the checkout (see `_openpcdet_ref.py` for the few CPU replacements) and built at full size
from its own config (`cbgs_voxel0075_res3d_centerpoint.yaml` / `waymo_models/centerpoint.yaml`); every
parameter and buffer is drawn at random, the heatmap biases set to OpenPCDet's init (-2.19), and the weights
converted to pc3d with `pc3d.compat.openpcdet`. Both run the voxels of the same scan (OpenPCDet's test-time
voxelization: spconv PointToVoxel on the in-range points). Rows: each stage and the whole network
(voxels -> boxes, decode and NMS included); `identical`: every output within 1e-4 (voxel rows matched by
coordinates, boxes matched by label and value). spconv's CPU kernels are wrong with more than one thread, so
both sides run the sparse 3D backbone single-threaded; the other stages use --threads.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NUSCENES_SCAN, KITTI_SCAN, benchmark_parser, report, time_call  # noqa: E402

CONFIGS = {"nuscenes": "tools/cfgs/nuscenes_models/cbgs_voxel0075_res3d_centerpoint.yaml",
           "waymo": "tools/cfgs/waymo_models/centerpoint.yaml"}


def _cfg(ref_root: Path, name: str) -> dict:
    cfg = yaml.safe_load((ref_root / CONFIGS[name]).read_text())
    data = cfg["DATA_CONFIG"]
    if "_BASE_CONFIG_" in data:
        base = yaml.safe_load((ref_root / "tools" / data["_BASE_CONFIG_"]).read_text())
        base.update({k: v for k, v in data.items() if k != "_BASE_CONFIG_"})
        cfg["DATA_CONFIG"] = base
    return cfg


def _seed(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("num_batches_tracked"):
                t.fill_(100)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif t.ndim == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
            else:
                fan_in = t[0].numel() if t.ndim != 4 or t.shape[1] * 9 != t[0].numel() else t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) / max(fan_in, 1) ** 0.5)


def _scan(args, name):
    if args.points is not None:
        from pc3d.io.points import read_points
        pts = np.asarray(read_points(args.points, dim=args.dim), np.float32)
        label = args.points.name
    else:
        path, dim = (NUSCENES_SCAN, 5) if name == "nuscenes" else (KITTI_SCAN, 4)
        if not path.exists():
            raise SystemExit(f"scan {path} missing; pass --points FILE --dim N")
        pts, label = np.fromfile(path, np.float32).reshape(-1, dim), path.name
    if pts.shape[1] < 5:  # both configs read 5 features; the 5th (time lag / elongation) is 0 for a single scan
        pts = np.concatenate([pts, np.zeros((len(pts), 5 - pts.shape[1]), np.float32)], 1)
    pts = pts[:, :5].copy()
    if name == "nuscenes":
        pts[:, 4] = 0.0  # key-frame time lag
    return pts, label


def _cpu_time_call(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Best process CPU time of `repeat` calls (after `warmup`): wall time inflates under load, CPU time does not."""
    import time
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--ref-root", type=Path, help="OpenPCDet checkout (open-mmlab/OpenPCDet)")
    parser.add_argument("--model", choices=sorted(CONFIGS), default="nuscenes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (with --threads 1, robust on a machine shared with other jobs)")
    parser.add_argument("--stages", default="vfe,backbone_3d,map_to_bev,backbone_2d,dense_head,decode,whole",
                        help="comma-separated rows to time")
    parser.set_defaults(repeat=3)
    args = parser.parse_args(argv)
    if args.ref_root is None:
        print("bench_reference: skipped: pass --ref-root /path/to/OpenPCDet (a checkout of open-mmlab/OpenPCDet)")
        return 0
    from _openpcdet_ref import EasyDict, load_openpcdet
    from spconv.pytorch.utils import PointToVoxel

    from pc3d.compat.openpcdet import DETECTORS, FAMILY
    from pc3d.compat.registry import RefContext, convert_sections, family
    from pc3d.compat.stages import build_detector, hard_voxels
    from pc3d.compat.verify import TOLERANCE, compare
    from pc3d.checkpoint import load_model_weights
    from pc3d.models.spconv_cpu import one_thread
    from pc3d.structures import SparseVoxels

    torch.set_num_threads(args.threads)
    ref = load_openpcdet(args.ref_root)
    cfg = _cfg(args.ref_root, args.model)
    model_cfg, classes = cfg["MODEL"], cfg["CLASS_NAMES"]
    proc = next(p for p in cfg["DATA_CONFIG"]["DATA_PROCESSOR"] if p["NAME"] == "transform_points_to_voxels")
    pr = [float(v) for v in cfg["DATA_CONFIG"]["POINT_CLOUD_RANGE"]]
    vs = [float(v) for v in proc["VOXEL_SIZE"]]
    grid = [int(round((pr[i + 3] - pr[i]) / vs[i])) for i in range(3)]
    E = EasyDict
    mods = {"vfe": ref["mean_vfe"].MeanVFE(E(model_cfg["VFE"]), 5),
            "backbone_3d": ref["spconv_backbone"].VoxelResBackBone8x(E(model_cfg["BACKBONE_3D"]), 5, np.array(grid)),
            "map_to_bev_module": ref["height_compression"].HeightCompression(E(model_cfg["MAP_TO_BEV"]))}
    mods["backbone_2d"] = ref["base_bev_backbone"].BaseBEVBackbone(E(model_cfg["BACKBONE_2D"]),
                                                                   model_cfg["MAP_TO_BEV"]["NUM_BEV_FEATURES"])
    mods["dense_head"] = ref["center_head"].CenterHead(
        E(model_cfg["DENSE_HEAD"]), mods["backbone_2d"].num_bev_features, len(classes), list(classes), np.array(grid),
        np.array(pr, np.float32), np.array(vs, np.float32), predict_boxes_when_training=False)
    for i, m in enumerate(mods.values()):
        _seed(m, 100 + i)
        m.eval()
    with torch.no_grad():
        for h in mods["dense_head"].heads_list:
            h.hm[-1].bias.fill_(-2.19)  # OpenPCDet's heatmap init
    state = {f"{p}.{k}": v for p, m in mods.items() for k, v in m.state_dict().items()}
    ctx = RefContext(class_names=tuple(classes), point_cloud_range=tuple(pr), voxel_size=tuple(vs),
                     grid_size=tuple(grid), num_point_features=5,
                     voxelization={"max_points_per_voxel": int(proc["MAX_POINTS_PER_VOXEL"])})
    pc3d_cfg, pc3d_state = convert_sections(family(FAMILY), model_cfg, DETECTORS["CenterPoint"].sections, state, ctx)
    model = build_detector(pc3d_cfg, ctx, {})
    load_model_weights(model, pc3d_state, "converted")
    model.eval()

    pts, label = _scan(args, args.model)
    keep = ((pts[:, :3] >= pr[:3]) & (pts[:, :3] <= pr[3:])).all(1)
    max_voxels = proc["MAX_NUMBER_OF_VOXELS"]["test"] if isinstance(proc["MAX_NUMBER_OF_VOXELS"], dict) else proc["MAX_NUMBER_OF_VOXELS"]
    gen = PointToVoxel(vsize_xyz=vs, coors_range_xyz=pr, num_point_features=5, max_num_voxels=int(max_voxels),
                       max_num_points_per_voxel=int(proc["MAX_POINTS_PER_VOXEL"]), device=torch.device("cpu"))
    voxels, coords, num = gen(torch.from_numpy(pts[keep]))
    coords = torch.cat([torch.zeros(len(coords), 1, dtype=coords.dtype), coords], 1).int()
    inputs = {"batch_size": 1, "voxels": voxels, "voxel_num_points": num.int(), "voxel_coords": coords}
    voxelized = hard_voxels(inputs, "bench")
    name = f"centerpoint_{args.model}/{label}"

    # ---- reference stages --------------------------------------------------------------------------------
    def ref_vfe():
        return mods["vfe"](dict(inputs))

    def ref_b3d(bd):
        with one_thread(torch.device("cpu")):
            return mods["backbone_3d"](dict(bd))

    def ref_bev(bd):
        return mods["map_to_bev_module"](dict(bd, encoded_spconv_tensor_stride=8))

    def ref_maps(x):
        shared = mods["dense_head"].shared_conv(x)
        return [h(shared) for h in mods["dense_head"].heads_list]

    def ref_decode(maps):
        return mods["dense_head"].generate_predicted_boxes(1, maps)

    def ref_whole():
        bd = ref_bev(ref_b3d(ref_vfe()))
        return ref_decode(ref_maps(mods["backbone_2d"](bd)["spatial_features_2d"]))

    # ---- pc3d stages -------------------------------------------------------------------------------------
    def sparse(features):
        return SparseVoxels(features, voxelized.coords, model.voxelizer.spatial_shape, 1, model.voxelizer.voxel_size,
                            model.voxelizer.point_range)

    with torch.no_grad():
        r = {"vfe": ref_vfe()}
        r["b3d"] = ref_b3d(r["vfe"])
        r["bev"] = ref_bev(r["b3d"])
        r["b2d"] = mods["backbone_2d"](dict(r["bev"]))["spatial_features_2d"]
        r["maps"] = ref_maps(r["b2d"])
        r["boxes"] = ref_decode(r["maps"])
        p = {"vfe": model.vfe(voxelized)}
        p["b3d"] = model.backbone_3d(sparse(p["vfe"]))
        p["bev"] = model.to_bev(p["b3d"])
        p["b2d"] = model.backbone_2d(p["bev"])
        p["maps"] = model.head(p["b2d"])
        p["boxes"] = model.head.decode(p["maps"])
    from pc3d.compat.openpcdet import _head_outputs

    def same(ref_out, got_out):
        diffs = []
        for key, value in ref_out.items():
            diffs += compare(key, value, got_out[key], ref_out, got_out)
        return all(d.max_abs_diff <= TOLERANCE for d in diffs)

    sp = r["b3d"]["encoded_spconv_tensor"]
    final = [{"pred_boxes": b.boxes, "pred_scores": b.scores, "pred_labels": b.labels + 1} for b in p["boxes"]]
    ref_final = [{k: d[k] for k in ("pred_boxes", "pred_scores", "pred_labels")} for d in r["boxes"]]
    identical = {
        "vfe": same({"voxel_features": r["vfe"]["voxel_features"], "voxel_coords": coords},
                    {"voxel_features": p["vfe"], "voxel_coords": voxelized.coords}),
        "backbone_3d": same({"x.features": sp.features, "x.indices": sp.indices},
                            {"x.features": p["b3d"].features, "x.indices": p["b3d"].coords}),
        "map_to_bev": same({"s": r["bev"]["spatial_features"]}, {"s": p["bev"]}),
        "backbone_2d": same({"s": r["b2d"]}, {"s": p["b2d"]}),
        "dense_head": same({"m": [{k: v for k, v in d.items()} for d in r["maps"]]}, {"m": _head_outputs(p["maps"])}),
        "decode": same({"b": ref_final}, {"b": final}),
    }
    identical["whole"] = all(identical.values())

    def pc3d_whole():
        return model.decode(model.forward_voxels(voxelized), voxelized)

    rows = [
        ("vfe", lambda: model.vfe(voxelized), ref_vfe),
        ("backbone_3d", lambda: model.backbone_3d(sparse(p["vfe"])), lambda: ref_b3d(r["vfe"])),
        ("map_to_bev", lambda: model.to_bev(p["b3d"]), lambda: ref_bev(r["b3d"])),
        ("backbone_2d", lambda: model.backbone_2d(p["bev"]), lambda: mods["backbone_2d"](dict(r["bev"]))),
        ("dense_head", lambda: model.head(p["b2d"]), lambda: ref_maps(r["b2d"])),
        ("decode", lambda: model.head.decode(p["maps"]), lambda: ref_decode(r["maps"])),
        ("whole", pc3d_whole, ref_whole),
    ]
    timer = time_call if args.clock == "wall" else _cpu_time_call
    with torch.no_grad():
        for stage, ours, theirs in rows:
            if stage not in args.stages.split(","):
                continue
            seconds = timer(ours, repeat=args.repeat)
            ref_seconds = timer(theirs, repeat=args.repeat)
            report(f"{name}/{stage}", seconds, "OpenPCDet", ref_seconds, identical[stage], args.json,
                   threads=args.threads, clock=args.clock, voxels=int(len(coords)), boxes=int(len(final[0]["pred_boxes"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
