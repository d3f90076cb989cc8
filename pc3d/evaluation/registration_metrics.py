"""3DMatch / 3DLoMatch registration metrics, following the published protocol.

- inlier ratio (IR): fraction of putative correspondences whose residual under the GT is < tau1 = 0.1 m;
- feature-matching recall (FMR): fraction of pairs with IR > tau2 = 5%;
- registration recall (RR): the 3DMatch information-matrix criterion
  `xi^T Sigma xi / Sigma_00 <= 0.2^2` with `xi = [t, q_xyz]` of `inv(T_gt) @ T_est` (q with w >= 0),
  counted on non-consecutive pairs (j - i > 1) only;
- RMSE recall for rotated data (the information matrix no longer applies): RMSE of the source points
  under `T_est` vs `T_gt` below 0.2 m;
- RRE (deg) / RTE (m).
Scores are averaged per scene, then over scenes (`summarize_by_scene`).

Transforms are `(4, 4)` and map the source (fragment j) into the reference (fragment i) frame.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.spatial.transform import Rotation

INLIER_DISTANCE = 0.1
INLIER_RATIO_THRESHOLD = 0.05
RMSE_THRESHOLD = 0.2


def _check_transform(transform, name: str) -> np.ndarray:
    transform = np.asarray(transform, dtype=np.float64)
    if transform.shape != (4, 4):
        raise ValueError(f"{name}: expected a (4, 4) transform, got {transform.shape}")
    if not np.isfinite(transform).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return transform


def relative_rotation_error(est, gt) -> float:
    """RRE in degrees: `arccos((trace(R_gt^T R_est) - 1) / 2)`."""
    est = _check_transform(est, "est")
    gt = _check_transform(gt, "gt")
    cos = (np.trace(gt[:3, :3].T @ est[:3, :3]) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def relative_translation_error(est, gt) -> float:
    """RTE in metres: `|t_est - t_gt|`."""
    est = _check_transform(est, "est")
    gt = _check_transform(gt, "gt")
    return float(np.linalg.norm(est[:3, 3] - gt[:3, 3]))


def inlier_ratio(src_corr, ref_corr, gt, tau: float = INLIER_DISTANCE) -> float:
    """Fraction of correspondences `(K, 3)`/`(K, 3)` with `|T_gt src - ref| < tau`; 0 for K = 0."""
    src_corr = np.asarray(src_corr, dtype=np.float64).reshape(-1, 3)
    ref_corr = np.asarray(ref_corr, dtype=np.float64).reshape(-1, 3)
    if len(src_corr) != len(ref_corr):
        raise ValueError(f"src_corr/ref_corr: lengths differ ({len(src_corr)} vs {len(ref_corr)})")
    if len(src_corr) == 0:
        return 0.0
    gt = _check_transform(gt, "gt")
    residual = np.linalg.norm(src_corr @ gt[:3, :3].T + gt[:3, 3] - ref_corr, axis=1)
    return float((residual < tau).mean())


def information_error(est, gt, information) -> float:
    """3DMatch error `xi^T Sigma xi / Sigma_00` of `inv(T_gt) @ T_est` (squared metres)."""
    est = _check_transform(est, "est")
    gt = _check_transform(gt, "gt")
    information = np.asarray(information, dtype=np.float64)
    if information.shape != (6, 6):
        raise ValueError(f"information: expected (6, 6), got {information.shape}")
    delta = np.linalg.inv(gt) @ est
    quat = Rotation.from_matrix(delta[:3, :3]).as_quat()  # x, y, z, w
    if quat[3] < 0:
        quat = -quat
    xi = np.concatenate([delta[:3, 3], quat[:3]])
    return float(xi @ information @ xi / information[0, 0])


def transform_rmse(est, gt, src_points) -> float:
    """RMSE (m) between the source points `(N, 3)` mapped by `T_est` and by `T_gt`."""
    est = _check_transform(est, "est")
    gt = _check_transform(gt, "gt")
    pts = np.asarray(src_points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        raise ValueError("src_points: empty")
    diff = pts @ (est[:3, :3] - gt[:3, :3]).T + (est[:3, 3] - gt[:3, 3])
    return float(np.sqrt((diff ** 2).sum(1).mean()))


def is_consecutive(frag_i: int, frag_j: int) -> bool:
    """3DMatch excludes consecutive fragments (j == i + 1) from registration recall."""
    return abs(int(frag_j) - int(frag_i)) <= 1


def evaluate_pair(est, gt, *, information=None, src_corr=None, ref_corr=None, src_points=None,
                  tau1: float = INLIER_DISTANCE, tau2: float = INLIER_RATIO_THRESHOLD) -> dict:
    """All metrics of one pair: `rre, rte, inlier_ratio, fmr_hit, information_error, rr_hit, rmse, rmse_hit`.

    `information` enables the information-matrix RR; `src_points` enables RMSE recall; correspondences
    enable IR / FMR. Absent inputs give NaN / None entries.
    """
    out = {"rre": relative_rotation_error(est, gt), "rte": relative_translation_error(est, gt)}
    if src_corr is not None:
        out["inlier_ratio"] = inlier_ratio(src_corr, ref_corr, gt, tau1)
        out["fmr_hit"] = out["inlier_ratio"] > tau2
    if information is not None:
        out["information_error"] = information_error(est, gt, information)
        out["rr_hit"] = out["information_error"] <= RMSE_THRESHOLD ** 2
    if src_points is not None:
        out["rmse"] = transform_rmse(est, gt, src_points)
        out["rmse_hit"] = out["rmse"] < RMSE_THRESHOLD
    return out


def summarize_by_scene(records: list[dict]) -> dict:
    """Average per scene, then over scenes.

    Each record: `{"scene", "frag_i", "frag_j", ...evaluate_pair keys}`. Registration recall (`rr_hit`,
    `rmse_hit`) uses only non-consecutive pairs; IR / FMR / RRE / RTE use all pairs (RRE / RTE over
    successfully registered pairs, as GeoTransformer reports them).
    Returns `{"scenes": {scene: {...}}, "mean": {...}}` with keys `inlier_ratio, feature_matching_recall,
    registration_recall, rmse_recall, rre, rte, num_pairs`.
    """
    by_scene = defaultdict(list)
    for rec in records:
        by_scene[rec["scene"]].append(rec)
    scenes = {}
    for scene, recs in sorted(by_scene.items()):
        non_consecutive = [r for r in recs if not is_consecutive(r["frag_i"], r["frag_j"])]

        def mean_of(items, key):
            vals = [float(r[key]) for r in items if r.get(key) is not None]
            return float(np.mean(vals)) if vals else float("nan")
        success_key = "rr_hit" if any("rr_hit" in r for r in recs) else "rmse_hit"
        registered = [r for r in non_consecutive if r.get(success_key)]
        scenes[scene] = {
            "num_pairs": len(recs),
            "inlier_ratio": mean_of(recs, "inlier_ratio"),
            "feature_matching_recall": mean_of(recs, "fmr_hit"),
            "registration_recall": mean_of(non_consecutive, "rr_hit"),
            "rmse_recall": mean_of(non_consecutive, "rmse_hit"),
            "rre": mean_of(registered, "rre"),
            "rte": mean_of(registered, "rte"),
        }
    keys = ["inlier_ratio", "feature_matching_recall", "registration_recall", "rmse_recall", "rre", "rte"]
    mean = {}
    for key in keys:
        vals = [s[key] for s in scenes.values() if not np.isnan(s[key])]
        mean[key] = float(np.mean(vals)) if vals else float("nan")
    mean["num_pairs"] = int(sum(s["num_pairs"] for s in scenes.values()))
    return {"scenes": scenes, "mean": mean}
