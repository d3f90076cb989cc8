"""Forward latency, peak memory and top ops of the 3D backbones on the same voxels (CPU).

    python benchmarks/bench_backbones.py [--points FILE --dim N --json --repeat K --width C]

The scan (KITTI by default, or --points) is pillarized on a Waymo-like 0.32 m grid (468 x 468);
`--synthetic` adds the ~25k-pillar synthetic Waymo-scale frame. All backbones get the same pillars
and the same width C (default 64): DSVT-P (2 blocks = 4 set-attention layers, sets of 36 in
12x12 / 24x24 windows), FlatFormer (1 block = 4 layers, groups of 69), ScatterFormer (4 layers),
and the spconv VoxelNet-style ResNet (channels C/4, C/2, C, C; pillar settings). Each model runs in
its own subprocess so the peak resident memory (ru_maxrss growth over the first forward, after
the model and voxels are built) is its own.
The row's reference is the spconv baseline (ratio > 1: faster than spconv). `top_ops` lists the
ops with the most self CPU time (torch.profiler).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, default_scans, report, time_call  # noqa: E402

MODELS = ("spconv_resnet", "DSVT-P", "FlatFormer", "ScatterFormer")


def model_config(name: str, width: int) -> dict:
    heads = max(1, width // 16)
    return {
        "DSVT-P": dict(type="DSVT", in_channels=4, dims=width, depths=2, num_heads=heads, dim_feedforward=2 * width,
                       set_size=36, window_shape=(12, 12, 1)),
        "FlatFormer": dict(type="FlatFormer", in_channels=4, dim=width, num_blocks=1, num_heads=heads, group_size=69,
                           window_shape=(9, 9)),
        "ScatterFormer": dict(type="ScatterFormer", in_channels=4, dim=width, num_layers=4, num_heads=heads,
                              kernel_size=7),
        "spconv_resnet": dict(type="SparseResNetBackbone", in_channels=4,
                              channels=(width // 4, width // 2, width, width), out_channels=width,
                              last_z_padding=1, z_down=False),
    }[name]


def _voxels(source: str, dim):
    from bench_partition import PILLAR, GRID_RANGE, SHAPE, synthetic_waymo_pillars
    from pc3d.structures import SparseVoxels
    if source == "synthetic":
        coords = synthetic_waymo_pillars()
        gen = torch.Generator().manual_seed(0)
        feats = torch.randn(coords.shape[0], 4, generator=gen)
    else:
        from pc3d.io.points import read_points
        from pc3d.ops.voxelize import dynamic_voxelize, voxel_reduce
        pts = torch.from_numpy(read_points(source, dim=dim)[:, :4].copy())
        vox = dynamic_voxelize(pts, PILLAR, GRID_RANGE)
        coords = vox.coords
        feats = voxel_reduce(pts, vox.point_voxel, vox.coords.shape[0])
    return SparseVoxels(feats, coords, SHAPE, 1, PILLAR, GRID_RANGE)


def _child(name: str, source: str, dim, width: int, repeat: int) -> dict:
    """Run one backbone in this process and return its measurements."""
    torch.set_num_threads(1)
    from pc3d.models.backbones_3d import build_backbone_3d
    voxels = _voxels(source, dim)
    model = build_backbone_3d(model_config(name, width)).eval()
    with torch.no_grad():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model(voxels)  # the first forward sets the peak (it also warms up spconv / the allocator)
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0
        seconds = time_call(lambda: model(voxels), repeat, warmup=0)
        from torch.profiler import profile
        with profile() as prof:
            model(voxels)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:5]
    top_ops = ", ".join(f"{e.key} {100 * e.self_cpu_time_total / max(total, 1):.0f}%" for e in top)
    return {"seconds": seconds, "peak_rss_growth_mb": peak_mb, "voxels": len(voxels), "top_ops": top_ops,
            "params": sum(p.numel() for p in model.parameters())}


def main(argv=None):
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64, help="channel width of every backbone")
    parser.add_argument("--synthetic", action="store_true", help="also run the ~25k-pillar synthetic frame")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SOURCE"), help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.dim, args.width, args.repeat)))
        return
    sources = [(label, str(path), dim) for label, path, dim in default_scans(args)][:1]
    if args.synthetic:
        sources.append(("synthetic_waymo_25k", "synthetic", None))
    for label, source, dim in sources:
        results = {}
        for name in MODELS:
            cmd = [sys.executable, __file__, "--child", name, source, "--width", str(args.width),
                   "--repeat", str(args.repeat)] + (["--dim", str(dim)] if dim else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = results["spconv_resnet"]["seconds"]
        for name in MODELS:
            r = results[name]
            report(f"{name}[{label}] width={args.width}", r["seconds"], "spconv_resnet", base, None, args.json,
                   voxels=r["voxels"], params=r["params"], peak_rss_growth_mb=r["peak_rss_growth_mb"],
                   top_ops=r["top_ops"])


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
