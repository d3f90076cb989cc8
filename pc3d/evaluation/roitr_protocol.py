"""The 3DMatch / 3DLoMatch evaluation exactly as RoITr's own scripts compute it (haoyu94/RoITr).

Use this to report numbers comparable, digit for digit, with the RoITr paper; `registration_metrics`
keeps pc3d's own (GeoTransformer-style) protocol. Differences between the two, all reproduced here:

- Correspondences: when a pair has more than `n_points` (1000), `n_points` of them are drawn without
  replacement with probability proportional to their confidence, from ONE legacy numpy stream seeded
  with 0 and consumed pair after pair in benchmark order. IR is measured on the drawn subset.
- IR is computed in float32 torch: `|src @ R^T + t - ref| < 0.1`; the GT pose for IR (and for the
  rotated RR) is the dataset's own pair pose (RoITr's `configs/tdmatch/<bench>.pkl`), which differs
  from gt.log in the 4th-5th decimal. FMR: IR > 0.05. Both are averaged per scene, then over scenes
  (IR means in float32).
- RR (plain benchmarks): the Redwood information error, with the estimated pose written to text with
  12 decimals and read back, the quaternion of `inv(T_gt) @ T_est` from the eigen-decomposition method
  (w >= 0), success at `p <= 0.2**2`. Only pairs with `j - i > 1` count, and, through the reference's
  `gt_mask[i, j] = index` test, never the FIRST pair listed in a scene's gt.log. RR = mean over scenes
  of `successes / counted pairs`; gt.info matrices are taken by position in the file.
- RR (rotated benchmarks): the mean (not root-mean-square) point distance between the source cloud
  under the estimated and the GT pose, in float32, below 0.2 m, over ALL pairs (consecutive ones too),
  averaged per scene then over scenes.
- Rotated benchmarks: pair `index` (global, benchmark order) is rotated with the legacy numpy stream
  seeded with `index`: Euler angles `rand(3) * 2pi` ('zyx'), applied to the source if a further
  `rand() > 0.5`, else to the target (`roitr_rotation`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pc3d.data.threedmatch import roitr_rotation
from pc3d.ops.weighted_sampling import sample_by_weight

INLIER_DISTANCE = 0.1
INLIER_RATIO_THRESHOLD = 0.05
RR_ERROR_SQ = 0.2 ** 2
ROTATED_DISTANCE = 0.2
N_POINTS = 1000


@dataclass
class ProtocolPair:
    """What RoITr's evaluation reads for one pair (benchmark order).

    `src_corr`/`ref_corr (K, 3)` float32 correspondence points, `confidence (K,)` float32 scores,
    `est (4, 4)` the estimated pose (src -> ref), `gt_rot (3, 3)` / `gt_trans (3,)` the dataset pose used
    for IR (and, rotated, for RR), `src_points (N, 3)` the source cloud (rotated RR only).
    """

    scene: str
    src_corr: np.ndarray
    ref_corr: np.ndarray
    confidence: np.ndarray
    est: np.ndarray
    gt_rot: np.ndarray
    gt_trans: np.ndarray
    src_points: np.ndarray | None = None

    def __post_init__(self):
        for name in ("src_corr", "ref_corr"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 2 or arr.shape[1] != 3:
                raise ValueError(f"{name}: expected (K, 3), got {arr.shape}")
        if len(self.src_corr) != len(self.ref_corr) or len(self.confidence) != len(self.src_corr):
            raise ValueError(f"{self.scene}: src_corr/ref_corr/confidence lengths differ "
                             f"({len(self.src_corr)}, {len(self.ref_corr)}, {len(self.confidence)})")
        if np.asarray(self.est).shape != (4, 4):
            raise ValueError(f"est: expected (4, 4), got {np.asarray(self.est).shape}")


@dataclass
class ProtocolResult:
    """Scores as RoITr's scripts compute them, unrounded; per-pair values in benchmark order."""

    inlier_ratio: float
    feature_matching_recall: float
    registration_recall: float
    scenes: dict = field(default_factory=dict)
    pair_inlier_ratio: np.ndarray | None = None
    pair_success: np.ndarray | None = None
    sampled: list = field(default_factory=list)


def sample_correspondences(confidence, n_points: int, rng: np.random.RandomState) -> np.ndarray:
    """Indices kept for a pair: all if K <= n_points, else `rng.choice(K, n_points, replace=False, p)`."""
    return sample_by_weight(confidence, n_points, rng)


def inlier_ratio_fp32(src_corr, ref_corr, gt_rot, gt_trans, tau: float = INLIER_DISTANCE) -> float:
    """`mean(|src @ R^T + t - ref| < tau)` in float32 torch (NaN for no correspondence, as the reference)."""
    src = torch.as_tensor(np.asarray(src_corr, np.float32))
    ref = torch.as_tensor(np.asarray(ref_corr, np.float32))
    rot = torch.as_tensor(np.asarray(gt_rot, np.float32))
    trans = torch.as_tensor(np.asarray(gt_trans, np.float32).reshape(3, 1))
    moved = torch.matmul(src, rot.T) + trans.T
    inliers = torch.norm(moved - ref, dim=-1) < tau
    return float(torch.sum(inliers) / src.shape[0])


def quaternion_wxyz(rotation) -> np.ndarray:
    """Unit quaternion (w, x, y, z), w >= 0, as the eigenvector of the largest eigenvalue of the symmetric
    4x4 matrix of Bar-Itzhack (2000) built from the rotation (lower triangle, divided by 3)."""
    r = np.asarray(rotation, dtype=np.float64)
    xx, yx, zx, xy, yy, zy, xz, yz, zz = r.flat
    k = np.array([
        [xx - yy - zz, 0, 0, 0],
        [yx + xy, yy - xx - zz, 0, 0],
        [zx + xz, zy + yz, zz - xx - yy, 0],
        [yz - zy, zx - xz, xy - yx, xx + yy + zz],
    ]) / 3.0
    vals, vecs = np.linalg.eigh(k)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    if q[0] < 0:
        q *= -1
    return q


def information_error(est, gt, information) -> float:
    """Redwood error `xi^T I xi / I_00`, `xi = [t, q_xyz]` of `inv(T_gt) @ T_est`, est rounded to 12 decimals."""
    est = np.array([[float(f"{v:.12f}") for v in row] for row in np.asarray(est, np.float64)])
    delta = np.linalg.inv(np.asarray(gt, np.float64)) @ est
    q = quaternion_wxyz(delta[:3, :3])
    xi = np.concatenate([delta[:3, 3], q[1:]], axis=0)
    info = np.asarray(information, np.float64)
    return (xi.reshape(1, 6) @ info @ xi.reshape(6, 1) / info[0, 0]).item()


def mean_point_distance(est, gt_rot, gt_trans, src_points) -> float:
    """Mean over source points of `|p @ R_est^T + t_est - (p @ R_gt^T + t_gt)|`, float32 torch."""
    pts = torch.as_tensor(np.asarray(src_points, np.float32))
    rot = torch.as_tensor(np.asarray(gt_rot, np.float32))
    trans = torch.as_tensor(np.asarray(gt_trans, np.float32).reshape(3, 1))
    est = np.asarray(est, np.float64)
    gt_moved = torch.matmul(pts, rot.T) + trans.T
    est_moved = torch.matmul(pts, torch.from_numpy(est[:3, :3].T).float()) + torch.from_numpy(est[:3, 3:4].T).float()
    return float(torch.mean(torch.sqrt(torch.sum((est_moved - gt_moved) ** 2, dim=-1))))


def _read_positional(path: Path, rows: int):
    """gt.log / gt.info blocks in file order: `[(i, j, n)], (B, rows, rows)`."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if len(lines) % (rows + 1):
        raise ValueError(f"{path}: expected blocks of 1 + {rows} lines, got {len(lines)} lines")
    heads, mats = [], []
    for b in range(0, len(lines), rows + 1):
        heads.append(tuple(int(v) for v in lines[b][:3]))
        mats.append(np.asarray(lines[b + 1:b + 1 + rows], dtype=np.float64))
    return heads, np.stack(mats)


def scene_registration_recall(scene_dir, est_poses) -> tuple[float, float, list[int]]:
    """`(precision, recall, flags)` of one scene: flags 0 success, 1 failure, 2 not counted."""
    gt_pairs, gt = _read_positional(Path(scene_dir) / "gt.log", 4)
    info_heads, info = _read_positional(Path(scene_dir) / "gt.info", 6)
    if len(est_poses) != len(gt_pairs):
        raise ValueError(f"{scene_dir}: {len(est_poses)} estimated poses for {len(gt_pairs)} gt.log pairs")
    counted = {}
    for idx, (i, j, _) in enumerate(gt_pairs):
        if j - i > 1 and idx > 0:  # the reference marks pairs by index, so index 0 is never marked
            counted[(i, j)] = idx
    good, n_res, flags = 0, 0, []
    for (i, j, _), pose in zip(gt_pairs, est_poses):
        idx = counted.get((i, j))
        if idx is None:
            flags.append(2)
            continue
        n_res += 1
        if information_error(pose, gt[idx], info[idx]) <= RR_ERROR_SQ:
            good += 1
            flags.append(0)
        else:
            flags.append(1)
    precision = good / (n_res if n_res else 1e6)
    return precision, good / len(counted), flags


def evaluate(pairs: list[ProtocolPair], benchmark_dir, *, rotated: bool = False, n_points: int = N_POINTS,
             seed: int = 0) -> ProtocolResult:
    """IR, FMR and RR of all pairs of one benchmark (`benchmark_dir` = `.../benchmarks/3DMatch`).

    `pairs` must be every pair of the benchmark in its order: scenes sorted by name, gt.log order within.
    """
    bench = Path(benchmark_dir)
    scenes = sorted(p.name for p in bench.iterdir() if (p / "gt.log").is_file())
    counts = [len(_read_positional(bench / s / "gt.log", 4)[0]) for s in scenes]
    if sum(counts) != len(pairs):
        raise ValueError(f"pairs: {len(pairs)} given, {sum(counts)} pairs listed under {bench}")
    rng = np.random.RandomState(seed)
    ir, success, sampled = [], [], []
    for pair in pairs:
        keep = sample_correspondences(pair.confidence, n_points, rng)
        sampled.append(keep)
        ir.append(inlier_ratio_fp32(np.asarray(pair.src_corr)[keep], np.asarray(pair.ref_corr)[keep],
                                    pair.gt_rot, pair.gt_trans))
        if rotated:
            if pair.src_points is None:
                raise ValueError(f"{pair.scene}: src_points is required for the rotated benchmark")
            success.append(float(mean_point_distance(pair.est, pair.gt_rot, pair.gt_trans, pair.src_points)
                                 < ROTATED_DISTANCE))
    ir = np.array(ir, dtype=np.float32)
    start, scene_ir, scene_fmr, scene_rr, per_scene = 0, [], [], [], {}
    flags_all = []
    for scene, count in zip(scenes, counts):
        chunk = slice(start, start + count)
        if any(p.scene != scene for p in pairs[chunk]):
            raise ValueError(f"pairs: scene {scene} expected at positions {start}..{start + count - 1}")
        scene_ir.append(np.mean(ir[chunk]))
        scene_fmr.append((ir[chunk] > INLIER_RATIO_THRESHOLD).mean())
        if rotated:
            scene_rr.append(np.array(success[chunk]).mean())
        else:
            _, recall, flags = scene_registration_recall(bench / scene, [p.est for p in pairs[chunk]])
            scene_rr.append(recall)
            flags_all.extend(flags)
        per_scene[scene] = {"inlier_ratio": float(scene_ir[-1]), "feature_matching_recall": float(scene_fmr[-1]),
                            "registration_recall": float(scene_rr[-1]), "num_pairs": count}
        start += count
    pair_success = np.array(success) if rotated else np.array(flags_all)
    return ProtocolResult(float(np.mean(scene_ir)), float(np.mean(scene_fmr)), float(np.mean(scene_rr)),
                          per_scene, ir, pair_success, sampled)


def rotate_pose(index: int, rot, trans) -> tuple[np.ndarray, np.ndarray]:
    """The pair pose (src -> ref) after RoITr's rotation of pair `index`, float32 as its loader returns it."""
    r_ab, on_source = roitr_rotation(index)
    rot = np.asarray(rot, np.float64)
    trans = np.asarray(trans, np.float64).reshape(3, 1)
    if on_source:
        rot = np.matmul(rot, r_ab.T)
    else:
        rot = np.matmul(r_ab, rot)
        trans = np.matmul(r_ab, trans)
    return rot.astype(np.float32), trans.astype(np.float32).reshape(3)
