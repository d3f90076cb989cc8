"""Pairwise registration: pc3d's RoITr matcher (LGR / weighted SVD / RANSAC pose) vs FPFH + RANSAC (Open3D).

    python benchmarks/bench_registration.py [--pairs 6] [--first-pair 0] [--datasets synthetic_rotated ...]
                                            [--ckpt CKPT] [--verify 8] [--points FILE --dim N] [--json]

Datasets (one row per method and dataset):
- `synthetic`: validation pairs from `pc3d.data.synthetic.registration_pairs` (seeds 100000+, every other
  one low-overlap), RR by RMSE < 0.2 m of the source points (as for rotated 3DMatch);
- `synthetic_rotated`: the same pairs with seeded Haar-uniform rotations of both clouds;
  `--first-pair K` starts at pair K (pairs K .. K + pairs - 1), so a later run can test on pairs that no
  earlier choice was tuned on;
- `3dlomatch_21_34`: the real PREDATOR fragment pair with the 3DLoMatch GT, RR by the gt.info criterion;
- `--points FILE`: the scan against a moved half of itself (RR by RMSE).
Methods: RoITr with LGR / weighted SVD / RANSAC poses and FPFH+RANSAC, each raw and `+icp`: refined by the
same coarse-to-fine point-to-plane ICP (`pc3d.models.registration.refine.refine_icp`, 5 cm voxels, 10 -> 5 ->
2 cm) on the same downsampled clouds, so raw compares with raw and refined with refined. `+verify`: the pose
chosen by ICP among `--verify` distinct hypotheses (`refine.verify_hypotheses`): for RoITr its LGR estimate,
per-patch poses and RANSAC pose on every mutual match of the one forward pass (`RoITr.verification_hypotheses`),
for FPFH the poses of as many RANSAC restarts (equal effort).
Columns: seconds per pair (model forward + pose [+ ICP]; the reference is FPFH+RANSAC's time with the same
refinement), `pose_seconds` (the pose estimator alone: LGR vs SVD vs RANSAC on the same correspondences), RR,
IR (tau = 0.1 m) of the method's correspondences, median RRE / RTE, `rr_high` / `rr_low` (synthetic pairs by
overlap kind) and `per_pair` (index, overlap kind, hit, IR, seconds of every pair).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, benchmark_parser, report  # noqa: E402

from pc3d.data.threedmatch import random_rotation, read_gt_info, read_gt_log  # noqa: E402
from pc3d.evaluation.registration_metrics import evaluate_pair  # noqa: E402
from pc3d.models.registration.fpfh_ransac import FPFHRansacRegistration  # noqa: E402
from pc3d.models.registration.refine import downsample_with_normals, refine_icp, verify_hypotheses  # noqa: E402
from pc3d.models.registration.roitr import DEFAULT_CHECKPOINT, load_checkpoint, prepare_cloud  # noqa: E402
from pc3d.models.registration.training import VAL_SEED  # noqa: E402


DATASETS = ("synthetic", "synthetic_rotated", "3dlomatch_21_34")


def synthetic_pairs(count: int, rotated: bool, first: int = 0):
    """Validation pairs `first .. first + count - 1`: seed VAL_SEED + k, odd k low-overlap."""
    from pc3d.data.synthetic.registration_pairs import make_registration_pair
    out = []
    for k in range(first, first + count):
        overlap = "low" if k % 2 else "high"
        p = make_registration_pair(VAL_SEED + k, overlap=overlap)
        src, ref, t = p.src_points.astype(np.float64), p.ref_points.astype(np.float64), p.transform.astype(np.float64)
        if rotated:
            rng = np.random.default_rng([7, k])
            rs, rr = random_rotation(rng), random_rotation(rng)
            src, ref = src @ rs.T, ref @ rr.T
            hs, hr = np.eye(4), np.eye(4)
            hs[:3, :3], hr[:3, :3] = rs, rr
            t = hr @ t @ hs.T
        out.append({"src": src, "ref": ref, "gt": t, "information": None, "index": k, "overlap": overlap})
    return out


def real_pair():
    root = SHARED_DATA / "3dmatch"
    frag = root / "fragments/predator_demo"
    if not frag.is_dir():
        return []
    from pc3d.data.threedmatch import load_fragment
    scene = root / "benchmarks/3DLoMatch/7-scenes-redkitchen"
    return [{"src": load_fragment(frag / "cloud_bin_34.pth"), "ref": load_fragment(frag / "cloud_bin_21.pth"),
             "gt": read_gt_log(scene / "gt.log")[(21, 34)], "information": read_gt_info(scene / "gt.info")[(21, 34)]}]


def self_pair(path: Path, dim):
    from pc3d.io.points import read_points
    ref = read_points(path, dim=dim)[:, :3].astype(np.float64)
    gt = np.eye(4)
    gt[:3, :3] = random_rotation(np.random.default_rng(0))
    gt[:3, 3] = [0.5, -0.3, 0.2]
    part = ref[ref[:, 0] < np.median(ref[:, 0])]
    return [{"src": (part - gt[:3, 3]) @ gt[:3, :3], "ref": ref, "gt": gt, "information": None}]


def run_roitr(model, pair, verify: int):
    """{pose: (transform, seconds, pose_seconds, src_corr, ref_corr)} sharing one forward pass; `lgr+verify`:
    the ICP-verified choice among `verify` hypotheses (already refined: its seconds include the ICP)."""
    start = time.perf_counter()
    cfg = model.config
    sx, sn, _ = prepare_cloud(pair["src"], cfg.num_points, cfg.normal_k, max_input_points=cfg.max_input_points)
    rx, rn, _ = prepare_cloud(pair["ref"], cfg.num_points, cfg.normal_k, max_input_points=cfg.max_input_points)
    with torch.no_grad():
        out = model(sx, sn, rx, rn)
        matches = model.match(out)
    forward = time.perf_counter() - start
    results = {}
    for pose in ("lgr", "svd", "ransac"):
        t0 = time.perf_counter()
        transform, _ = model.estimate(matches, pose)
        pose_seconds = time.perf_counter() - t0
        results[pose] = (transform, forward + pose_seconds, pose_seconds,
                         matches["src_points"].double().numpy(), matches["ref_points"].double().numpy())
    t0 = time.perf_counter()
    hypotheses = model.verification_hypotheses(out, verify, "lgr")
    transform, _, _ = verify_hypotheses(pair["src"], pair["ref"], hypotheses, 0.05)
    verify_seconds = time.perf_counter() - t0
    results["lgr+verify"] = (transform, forward + verify_seconds, verify_seconds) + results["lgr"][3:]
    return results


def evaluate(transform, pair, src_corr, ref_corr):
    info = pair["information"]
    rec = evaluate_pair(transform, pair["gt"], information=info, src_corr=src_corr, ref_corr=ref_corr,
                        src_points=pair["src"] if info is None else None)
    rec["hit"] = rec["rr_hit"] if info is not None else rec["rmse_hit"]
    return rec


def recall_by_overlap(pairs, recs) -> dict:
    """{"rr_high": ..., "rr_low": ...} over the pairs of each overlap kind present (synthetic pairs only)."""
    out = {}
    for kind in ("high", "low"):
        hits = [r["hit"] for pair, r in zip(pairs, recs) if pair.get("overlap") == kind]
        if hits:
            out[f"rr_{kind}"] = float(np.mean(hits))
    return out


def main(argv=None):
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6, help="synthetic validation pairs")
    parser.add_argument("--first-pair", type=int, default=0, help="index of the first synthetic pair")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="datasets to run")
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--verify", type=int, default=8, help="pose hypotheses of the +verify rows (RoITr: LGR/RANSAC "
                        "poses; FPFH: RANSAC restarts)")
    args = parser.parse_args(argv)
    if args.pairs < 0 or args.first_pair < 0:
        parser.error(f"--pairs and --first-pair must be >= 0, got {args.pairs} and {args.first_pair}")
    torch.set_num_threads(1)
    model = load_checkpoint(args.ckpt)
    fpfh = FPFHRansacRegistration(voxel_size=0.05, icp=False)  # refined below like every method
    fpfh_verify = FPFHRansacRegistration(voxel_size=0.05, icp=True, restarts=args.verify)
    loaders = {"synthetic": lambda: synthetic_pairs(args.pairs, False, args.first_pair),
               "synthetic_rotated": lambda: synthetic_pairs(args.pairs, True, args.first_pair),
               "3dlomatch_21_34": real_pair}
    datasets = [(name, loaders[name]()) for name in DATASETS if name in args.datasets]
    if args.points is not None:
        datasets.append((args.points.name, self_pair(args.points, args.dim)))
    methods = [f"{m}{suffix}" for suffix in ("", "+icp") for m in ("roitr_lgr", "roitr_svd", "roitr_ransac", "fpfh_ransac")]
    methods += ["roitr_lgr+verify", "fpfh_ransac+verify"]
    for name, pairs in datasets:
        if not pairs:
            continue
        rows = {m: [] for m in methods}
        for pair in pairs:
            raw = {f"roitr_{pose}": (t, secs, pose_secs, sc, rc) for pose, (t, secs, pose_secs, sc, rc) in run_roitr(model, pair, args.verify).items()}
            verified = {"roitr_lgr+verify": raw.pop("roitr_lgr+verify")}
            res = fpfh_verify.register(pair["src"], pair["ref"])
            verified["fpfh_ransac+verify"] = (res.transform, res.seconds, res.seconds, pair["src"][res.correspondences[:, 0]],
                                              pair["ref"][res.correspondences[:, 1]])
            for method, (t, secs, pose_secs, sc, rc) in verified.items():
                rows[method].append((evaluate(t, pair, sc, rc), secs, pose_secs))
            res = fpfh.register(pair["src"], pair["ref"])
            raw["fpfh_ransac"] = (res.transform, res.seconds, res.seconds, pair["src"][res.correspondences[:, 0]],
                                  pair["ref"][res.correspondences[:, 1]])
            t0 = time.perf_counter()
            clouds = downsample_with_normals(pair["src"], 0.05), downsample_with_normals(pair["ref"], 0.05)
            prepare_seconds = time.perf_counter() - t0
            for method, (t, secs, pose_secs, sc, rc) in raw.items():
                rows[method].append((evaluate(t, pair, sc, rc), secs, pose_secs))
                t0 = time.perf_counter()
                refined, _ = refine_icp(*clouds, t, voxel_size=0.05)
                icp_seconds = prepare_seconds + time.perf_counter() - t0
                rows[f"{method}+icp"].append((evaluate(refined, pair, sc, rc), secs + icp_seconds, pose_secs))
        for method, items in rows.items():
            reference = "fpfh_ransac" + next((x for x in ("+icp", "+verify") if method.endswith(x)), "")
            ref_seconds = float(np.mean([s for _, s, _ in rows[reference]]))
            recs = [r for r, _, _ in items]
            report(f"registration/{name}/{method}", float(np.mean([s for _, s, _ in items])), reference, ref_seconds, None,
                   args.json, pairs=len(recs), pose_seconds=float(np.mean([p for _, _, p in items])),
                   per_pair=[{"index": pair.get("index"), "overlap": pair.get("overlap"), "hit": bool(r["hit"]),
                              "ir": round(float(r["inlier_ratio"]), 4), "seconds": round(s, 3)}
                             for pair, (r, s, _) in zip(pairs, items)],
                   **recall_by_overlap(pairs, recs),
                   rr=float(np.mean([r["hit"] for r in recs])),
                   ir=float(np.mean([r["inlier_ratio"] for r in recs])),
                   rre_median=float(np.median([r["rre"] for r in recs])), rte_median=float(np.median([r["rte"] for r in recs])))

if __name__ == "__main__":
    main()
