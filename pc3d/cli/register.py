#!/usr/bin/env python
"""Align two point files: prints / writes the 4x4 transform mapping SRC into REF's frame.

    python tools/register.py SRC REF [--method fpfh|roitr] [--pose lgr|svd|ransac] [--ckpt CKPT]
                             [--voxel-size 0.05] [--verify N] [--no-icp] [--out T.txt] [--json]

Points are read with `pc3d.io.points.read_points` (.bin/.npy/.ply/.pcd/.pth); only x, y, z are used.
With `--method roitr` and no `--ckpt`, the shipped `checkpoints/roitr_synthetic_tiny.pth` is used.
`--verify N` (default 8 for roitr, 1 for fpfh): choose the pose among N hypotheses by ICP (RoITr: its LGR
and RANSAC poses; FPFH: N RANSAC restarts); 1 refines the single estimate.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def read_xyz(path: str, dim: int | None) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"point file not found: {p}")
    if p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    else:
        from pc3d.io.points import read_points
        arr = read_points(p, dim=dim)
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{p}: expected (N, 3+) points, got shape {arr.shape}")
    return arr[:, :3].astype(np.float64)


def main(argv=None) -> int:
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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(max(1, args.threads))
    from pc3d.models.registration.api import build_registration

    try:
        src = read_xyz(args.src, args.dim)
        ref = read_xyz(args.ref, args.dim)
        icp = not args.no_icp
        if args.verify is not None and args.verify < 1:
            raise ValueError(f"--verify: expected an int >= 1, got {args.verify}")
        if args.method == "fpfh":
            method = build_registration("fpfh", voxel_size=args.voxel_size, icp=icp, restarts=args.verify or 1)
        else:
            method = build_registration("roitr", ckpt=args.ckpt, pose=args.pose, icp=icp, voxel_size=args.voxel_size,
                                        verify=8 if args.verify is None else args.verify)
        result = method.register(src, ref)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        np.savetxt(args.out, result.transform, fmt="%.9f")
    if args.json:
        print(json.dumps({"src": args.src, "ref": args.ref, "method": method.name, **result.to_dict()}))
    else:
        print(np.array2string(result.transform, precision=6, suppress_small=True))
        print(f"method={method.name} inliers={result.inliers} correspondences={len(result.correspondences)} "
              f"seconds={result.seconds:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
