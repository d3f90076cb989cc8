"""GPU latency, peak memory and training-step time of the full-size Waymo configs, against the papers' figures.

    python benchmarks/bench_gpu.py [--device cuda] [--json] [--points FILE --dim N] [--precisions fp32 bf16 fp16]
                                   [--configs configs/waymo/dsvt_pillar.yaml ...] [--quick] [--budget-s 300]

For every config of configs/waymo/ (DSVT-P, DSVT-V, FlatFormer, ScatterFormer, SST, and the spconv CenterPoint on
spconv or spconv-triton), on a real scan (KITTI 000001 from ../shared/data, or --points) and on a synthetic 64-beam
Waymo-size frame from pc3d's simulator, in fp32, bf16 and fp16 (autocast):
- forward latency, whole (`Detector.predict`, voxelization and decoding included) and per stage (voxelize, vfe,
  backbone_3d, to_bev, backbone_2d, head, decode), the median of the timed runs after warm-up, timed with CUDA
  events on a GPU (wall clock on the CPU);
- peak GPU memory of those runs (`torch.cuda.max_memory_allocated`);
- one training step (forward, loss, backward, AdamW step; GradScaler in fp16) at batch 4 on four synthetic frames.

Weights are the configs' own random initialisation (speed does not depend on them; the decode stage sees whatever
peaks random weights give, capped by the configs' pre/post_max_size). One JSON object per row (`--json`):
`name, seconds, reference, reference_seconds, ratio, identical` plus `stages_ms`, `peak_memory_mb`, `points`,
`voxels`, `device_name`, `torch`, `cuda`. `reference` is the paper's figure with the GPU it was measured on; ratio =
reference_seconds / seconds (> 1: faster here). FlatFormer's and SST's papers give relative speed only: their rows
compare with the CenterPoint / FlatFormer measured in the same run (`claimed_speedup`). Rows that cannot run
(`--budget-s` spent, no sparse-conv library) carry `seconds: null` and `error`.
`--device cpu --quick` runs everything once on the CPU (for the tests; use small --configs).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import KITTI_SCAN, REPO_ROOT, benchmark_parser, report  # noqa: E402

WAYMO_CONFIGS = ["dsvt_pillar", "dsvt_voxel", "flatformer", "scatterformer", "sst", "centerpoint_voxel"]
# The papers' latencies (PyTorch unless noted), with the GPU they were measured on.
REFERENCES = {
    "dsvt_pillar": ("DSVT-P 67 ms, PyTorch, RTX 3090 (DSVT, CVPR 2023: latency table; 37 ms with TensorRT)", 0.067),
    "dsvt_voxel": ("DSVT-V 97 ms, PyTorch, RTX 3090 (DSVT, CVPR 2023: latency table)", 0.097),
    "centerpoint_voxel": ("CenterPoint-Voxel 40 ms, RTX 3090 (DSVT, CVPR 2023: latency table)", 0.040),
    "scatterformer": ("ScatterFormer 23 FPS = 43 ms (ScatterFormer, ECCV 2024; GPU not named in its README)", 1 / 23),
    "flatformer": ("FlatFormer: 1.4x CenterPoint's speed, same GPU (FlatFormer, CVPR 2023; no absolute figure)", None),
    "sst": ("SST: 4.6x slower than FlatFormer, same GPU (FlatFormer, CVPR 2023; no absolute figure)", None),
}
CLAIMS = [("flatformer", "centerpoint_voxel", 1.4, "FlatFormer paper: FlatFormer 1.4x faster than CenterPoint"),
          ("flatformer", "sst", 4.6, "FlatFormer paper: FlatFormer 4.6x faster than SST")]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
STAGES = ("voxelize", "vfe", "backbone_3d", "to_bev", "backbone_2d", "head", "decode")


class Clock:
    """CUDA events on a GPU (time on the device's stream), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start


def parse_args(argv=None):
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--configs", nargs="+", type=Path,
                        default=[REPO_ROOT / f"configs/waymo/{n}.yaml" for n in WAYMO_CONFIGS])
    parser.add_argument("--precisions", nargs="+", choices=sorted(PRECISIONS), default=["fp32", "bf16", "fp16"])
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before the timed ones")
    parser.add_argument("--quick", action="store_true", help="one warm-up and one timed run (tests, CPU)")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic Waymo-size frame")
    parser.add_argument("--synthetic-lidar", default="waymo64", help="pc3d simulator preset (waymo64, tiny16, ...)")
    parser.add_argument("--train-batch", type=int, default=4, help="frames per training step (0: no training rows)")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting new rows after this many seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.repeat = 1, 1
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    return args


def _frame(points: np.ndarray, names, boxes=None, frame_id="scan"):
    from pc3d.structures import Frame, PointCloud
    if points.shape[1] < len(names):  # KITTI / synthetic have no elongation: zero-filled
        points = np.concatenate([points, np.zeros((len(points), len(names) - points.shape[1]), np.float32)], 1)
    return Frame(PointCloud(np.ascontiguousarray(points[:, :len(names)], dtype=np.float32), tuple(names)), boxes,
                 frame_id)


def load_scans(args, names):
    """[(label, points (N, >=4) float32, gt Boxes3D or None)]: the real scan, then synthetic frames."""
    from pc3d.io.points import read_points
    scans = []
    if args.points is not None:
        scans.append((args.points.stem, np.asarray(read_points(args.points, dim=args.dim), np.float32), None))
    elif KITTI_SCAN.exists():
        scans.append(("kitti_000001", np.fromfile(KITTI_SCAN, np.float32).reshape(-1, 4), None))
    synthetic = []
    if not args.no_synthetic or args.train_batch:
        from pc3d.data.synthetic import LidarConfig, simulate_frame
        lidar = LidarConfig.preset(args.synthetic_lidar)
        for seed in range(max(1, args.train_batch)):
            frame = simulate_frame(seed, lidar_config=lidar)
            synthetic.append((f"synthetic_{args.synthetic_lidar}", frame.points.points.numpy(), frame.gt_boxes))
    if not args.no_synthetic:
        scans.append(synthetic[0])
    if not scans:
        raise SystemExit(f"no real scan at {KITTI_SCAN} and --no-synthetic: pass --points FILE")
    return scans, synthetic


def staged_forward(model, batch, clock):
    """`Detector.predict` split at its stages; returns the marks around them."""
    from pc3d.structures import SparseVoxels
    marks = [clock.mark()]
    voxelized = model.voxelize(batch)
    marks.append(clock.mark())
    features = model.vfe(voxelized)
    marks.append(clock.mark())
    voxels = SparseVoxels(features, voxelized.coords, model.voxelizer.spatial_shape, voxelized.batch_size,
                          model.voxelizer.voxel_size, model.voxelizer.point_range)
    out = model.backbone_3d(voxels)
    marks.append(clock.mark())
    bev = model.to_bev(out)
    marks.append(clock.mark())
    x = model.backbone_2d(bev)
    marks.append(clock.mark())
    predictions = model.head(x)
    marks.append(clock.mark())
    model.decode(predictions, voxelized)
    marks.append(clock.mark())
    return marks, voxelized.num_voxels


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def time_forward(model, batch, device, dtype, warmup, repeat):
    clock = Clock(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(warmup):
            model.predict(batch)
        _peak_reset(device)
        whole = []
        for _ in range(repeat):
            start = clock.mark()
            model.predict(batch)
            end = clock.mark()
            clock.sync()
            whole.append(clock.seconds(start, end))
        stages = {s: [] for s in STAGES}
        for _ in range(repeat):
            marks, num_voxels = staged_forward(model, batch, clock)
            clock.sync()
            for name, a, b in zip(STAGES, marks, marks[1:]):
                stages[name].append(clock.seconds(a, b))
    return (statistics.median(whole), {k: round(statistics.median(v) * 1e3, 3) for k, v in stages.items()},
            _peak_mb(device), num_voxels)


def time_train_step(model, batch, device, dtype, warmup, repeat):
    clock = Clock(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    times, losses = [], []
    try:
        for step in range(warmup + repeat):
            if step == warmup:
                _peak_reset(device)
            start = clock.mark()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                total = model(batch).total
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            end = clock.mark()
            clock.sync()
            losses.append(float(total.detach()))
            if step >= warmup:
                times.append(clock.seconds(start, end))
    finally:
        model.eval()
    return statistics.median(times), _peak_mb(device), losses


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda}


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available (torch {torch.__version__}); use --device cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are fp32 (the papers' PyTorch setting)
        torch.backends.cudnn.allow_tf32 = False
    from pc3d.config import load_config
    from pc3d.models.build import build_model
    from pc3d.structures import collate

    env = environment(device)
    start_all = time.perf_counter()
    cfgs = {Path(p).stem: load_config(p) for p in args.configs}
    names = next(iter(cfgs.values()))["dataset"]["point_features"]
    scans, synthetic = load_scans(args, names)
    measured = {}

    def over_budget():
        return args.budget_s is not None and time.perf_counter() - start_all > args.budget_s

    def skip(name, reason, model_name):
        ref, ref_s = REFERENCES.get(model_name, (None, None))
        report(name, None, ref, ref_s, None, args.json, error=reason, **env)

    def build(model_name):
        torch.manual_seed(0)
        return build_model(cfgs[model_name]).eval().to(device)

    models = {}
    for precision in args.precisions:
        dtype = PRECISIONS[precision]
        for label, points, _ in scans:
            for model_name, cfg in cfgs.items():
                name = f"gpu/{model_name}/{label}/{precision}/forward"
                if over_budget():
                    skip(name, f"skipped: --budget-s {args.budget_s} spent", model_name)
                    continue
                try:
                    if model_name not in models:
                        models[model_name] = build(model_name)
                    batch = collate([_frame(points, cfg["dataset"]["point_features"])]).to(device)
                    seconds, stages, peak, voxels = time_forward(models[model_name], batch, device, dtype,
                                                                 args.warmup, args.repeat)
                except Exception as err:  # noqa: BLE001  (a row that cannot run is reported, the rest go on)
                    skip(name, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}", model_name)
                    models.pop(model_name, None)
                    continue
                measured[(model_name, label, precision)] = seconds
                ref, ref_s = REFERENCES.get(model_name, (None, None))
                report(name, seconds, ref, ref_s, None, args.json, stages_ms=stages, peak_memory_mb=peak,
                       points=int(len(points)), voxels=int(voxels), **env)
    for model_a, model_b, claim, text in CLAIMS:
        for (m, label, precision), seconds in list(measured.items()):
            if m != model_a or (model_b, label, precision) not in measured:
                continue
            other = measured[(model_b, label, precision)]
            report(f"gpu/{model_a}_vs_{model_b}/{label}/{precision}/forward", seconds, f"{model_b} measured here",
                   other, None, args.json, claimed_speedup=claim, claim=text, **env)
    if args.train_batch:
        frames = synthetic[:args.train_batch]
        for precision in args.precisions:
            dtype = PRECISIONS[precision]
            for model_name, cfg in cfgs.items():
                name = f"gpu/{model_name}/{frames[0][0]}/{precision}/train_step_b{len(frames)}"
                if over_budget():
                    skip(name, f"skipped: --budget-s {args.budget_s} spent", model_name)
                    continue
                try:
                    model = build(model_name)
                    batch = collate([_frame(p, cfg["dataset"]["point_features"], boxes, f"synthetic_{i}")
                                     for i, (_, p, boxes) in enumerate(frames)]).to(device)
                    seconds, peak, losses = time_train_step(model, batch, device, dtype, max(1, args.warmup - 1),
                                                            args.repeat)
                except Exception as err:  # noqa: BLE001  (a row that cannot run is reported, the rest go on)
                    skip(name, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}", model_name)
                    continue
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                report(name, seconds, None, None, None, args.json, peak_memory_mb=peak, batch_size=len(frames),
                       losses_finite=bool(np.isfinite(losses).all()), first_loss=losses[0], last_loss=losses[-1],
                       **env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
