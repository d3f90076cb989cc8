#!/usr/bin/env python
"""Align two point files: prints / writes the 4x4 transform mapping SRC into REF's frame.

    python tools/register.py SRC REF [--method fpfh|roitr] [--pose lgr|svd|ransac] [--ckpt CKPT]
                             [--voxel-size 0.05] [--verify N] [--no-icp] [--out T.txt] [--json]
                             [--gt T_GT.txt] [--render out.png]

Points are read with `pc3d.io.points.read_points` (.bin/.npy/.ply/.pcd/.pth); only x, y, z are used.
A cloud with fewer than `MIN_POINTS` points, or whose points all coincide (zero extent), is refused: no
transform can be estimated from it.
With `--method roitr` and no `--ckpt`, the shipped `checkpoints/roitr_synthetic_tiny.pth` is used.
`--verify N` (default 8 for roitr, 1 for fpfh): choose the pose among N hypotheses by ICP (RoITr: its LGR
and RANSAC poses; FPFH: N RANSAC restarts); 1 refines the single estimate.
`--gt T_GT.txt`: the true 4x4 transform (plain text, as `--out` writes it); reports the relative rotation
error (deg), relative translation error (m) and the RMSE (m) of the source points under both transforms
(`pc3d.evaluation.registration_metrics`). `--render out.png`: the registration figure (before / after /
correspondences, `pc3d.viz.render_registration`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pc3d.cli.errors import UserError, input_file, run_cli

# Fewer points than this cannot constrain a rigid transform robustly (3 is the algebraic minimum; the
# feature and ICP stages need neighbourhoods).
MIN_POINTS = 10
# Points closer together than this (in every axis) count as one location.
MIN_EXTENT = 1e-6


def read_xyz(path: str, dim: int | None) -> np.ndarray:
    p = input_file(path, "point")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as err:
            raise UserError(f"{p}: not a readable .npy array ({err})") from None
    else:
        from pc3d.io.points import read_points
        arr = read_points(p, dim=dim)
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise UserError(f"{p}: expected (N, 3+) points, got shape {arr.shape}")
    xyz = arr[:, :3].astype(np.float64)
    check_not_degenerate(xyz, p)
    return xyz


def check_not_degenerate(xyz: np.ndarray, source) -> None:
    """Refuse a cloud no transform can be estimated from: too few points, or all at one location."""
    if len(xyz) < MIN_POINTS:
        raise UserError(f"{source}: {len(xyz)} point(s); registration needs at least {MIN_POINTS}")
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        raise UserError(f"{source}: {int((~finite).sum())} point(s) with NaN or inf coordinates")
    if float((xyz.max(axis=0) - xyz.min(axis=0)).max()) <= MIN_EXTENT:
        raise UserError(f"{source}: all {len(xyz)} points are at one location (zero extent); nothing to register")


def read_transform(path) -> np.ndarray:
    p = input_file(path, "transform")
    try:
        transform = np.loadtxt(p, dtype=np.float64)
    except ValueError as err:
        raise UserError(f"{p}: not a 4x4 matrix of numbers ({err})") from None
    if transform.shape != (4, 4) or not np.isfinite(transform).all():
        raise UserError(f"{p}: expected a finite 4x4 transform, got shape {transform.shape}")
    return transform


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Rigidly register SRC onto REF.")
    parser.add_argument("src")
    parser.add_argument("ref")
    parser.add_argument("--method", choices=["fpfh", "roitr"], default="fpfh")
    parser.add_argument("--pose", choices=["lgr", "svd", "ransac", "reference_ransac"], default="lgr",
                        help="roitr pose estimator (reference_ransac: RoITr's own evaluation, for converted checkpoints)")
    parser.add_argument("--ckpt", default=None, help="roitr checkpoint (default: shipped tiny synthetic model)")
    parser.add_argument("--voxel-size", type=float, default=0.05, help="fpfh / ICP voxel size (m)")
    parser.add_argument("--verify", type=int, default=None,
                        help="pose hypotheses told apart by ICP (default: 8 for roitr, 1 for fpfh)")
    parser.add_argument("--no-icp", action="store_true",
                        help="skip the point-to-plane ICP refinement (the same for every method, on by default)")
    parser.add_argument("--dim", type=int, default=None, help="columns of .bin files")
    parser.add_argument("--out", default=None, help="write the 4x4 transform as plain text")
    parser.add_argument("--gt", default=None, help="true 4x4 transform (text): report RRE / RTE / RMSE")
    parser.add_argument("--render", default=None, help="write the registration figure (PNG) here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(max(1, args.threads))
    from pc3d.models.registration.build import build_registration

    src = read_xyz(args.src, args.dim)
    ref = read_xyz(args.ref, args.dim)
    gt = read_transform(args.gt) if args.gt else None
    icp = not args.no_icp
    if args.verify is not None and args.verify < 1:
        raise UserError(f"--verify: expected an int >= 1, got {args.verify}")
    if args.method == "fpfh":
        method = build_registration("fpfh", voxel_size=args.voxel_size, icp=icp, restarts=args.verify or 1)
    else:
        method = build_registration("roitr", ckpt=args.ckpt, pose=args.pose, icp=icp, voxel_size=args.voxel_size,
                                    verify=8 if args.verify is None else args.verify)
    result = method.register(src, ref)
    report = {}
    if gt is not None:
        from pc3d.evaluation.registration_metrics import (relative_rotation_error, relative_translation_error,
                                                          transform_rmse)
        report = {"rre_deg": relative_rotation_error(result.transform, gt),
                  "rte_m": relative_translation_error(result.transform, gt),
                  "rmse_m": transform_rmse(result.transform, gt, src)}
    if args.out:
        np.savetxt(args.out, result.transform, fmt="%.9f")
    if args.render:
        from pc3d.viz import render_registration
        corr = result.correspondences if len(result.correspondences) else None
        title = f"{method.name}" + (f": RRE {report['rre_deg']:.2f} deg, RTE {report['rte_m'] * 100:.1f} cm"
                                    if report else "")
        report["render"] = str(render_registration(src, ref, result.transform, corr, out=args.render,
                                                    title=title).path)
    if args.json:
        print(json.dumps({"src": args.src, "ref": args.ref, "method": method.name, **result.to_dict(), **report}))
    else:
        print(np.array2string(result.transform, precision=6, suppress_small=True))
        print(f"method={method.name} inliers={result.inliers} correspondences={len(result.correspondences)} "
              f"seconds={result.seconds:.3f}")
        if gt is not None:
            print(f"RRE {report['rre_deg']:.3f} deg  RTE {report['rte_m']:.4f} m  RMSE {report['rmse_m']:.4f} m")
        if args.render:
            print(f"render: {report['render']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
