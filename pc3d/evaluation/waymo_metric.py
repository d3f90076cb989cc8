"""Waymo 3D detection metrics (AP / APH at LEVEL_1 and LEVEL_2) as the official C++ op computes them.

Semantics follow waymo_open_dataset/metrics (detection_metrics.cc, matcher.cc, metrics_utils.cc,
tools/compute_detection_metrics_main.cc) with the default challenge config:

- breakdown OBJECT_TYPE: predictions and ground truths of one type are matched only with each other;
  IoU thresholds Vehicle 0.7, Pedestrian / Cyclist / Sign 0.5; 3D (upright, rotated) IoU.
- score cut-offs 0.00, 0.01, ..., 0.99, 1.00 (float32); at each cut-off the predictions with
  `score >= cutoff` are matched to the frame's ground truths by the Hungarian algorithm maximising the
  sum of quantised IoU (`round(iou * 1e6)`); a pair is a match only if `iou >= threshold`.
- TP: a matched prediction (whatever the difficulty of its ground truth); FP: an unmatched prediction;
  FN at level L: an unmatched ground truth whose difficulty is <= L (so LEVEL_2 includes LEVEL_1, and
  at LEVEL_1 a LEVEL_2 ground truth is never a miss but can still be hit).
- heading accuracy of a TP: `1 - min(|dh|, 2 pi - |dh|) / pi`; APH uses `sum(ha) / (TP + FP)` as the
  precision (recall is unweighted).
- precision is 0 when TP + FP = 0 and set to 1 where recall is 0; AP is the trapezoid area under the
  max-precision envelope of the (recall, precision) points, with extra points inserted every
  `desired_recall_delta` (0.05) of recall where the points are further apart (ComputeMeanAveragePrecision).
- ground truths with `num_points == 0` are dropped (the official tool skips boxes with no lidar point);
  difficulty = `Boxes3D.difficulty` when given, else LEVEL_2 iff `num_points <= 5`, else LEVEL_1.

Speed: IoU is only computed between same-class boxes whose bounding circles and z ranges overlap;
a (pd, gt) edge that is the only edge of both boxes (the common case) is resolved analytically for
all cut-offs at once (matched for every cut-off below the prediction's score); only connected
components with several edges are solved with `scipy.optimize.linear_sum_assignment`, once per
distinct score level inside the component. Per-cut-off counts are accumulated as histograms.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from pc3d.ops.box_geometry import box_iou_3d_paired
from pc3d.structures import Boxes3D, check_ground_truth

WAYMO_TYPES = ("VEHICLE", "PEDESTRIAN", "SIGN", "CYCLIST")       # official breakdown order
DEFAULT_IOU_THRESHOLDS = {"VEHICLE": 0.7, "PEDESTRIAN": 0.5, "SIGN": 0.5, "CYCLIST": 0.5}
# pc3d class names (lower-cased) that mean each Waymo type
_NAME_ALIASES = {"vehicle": "VEHICLE", "car": "VEHICLE", "pedestrian": "PEDESTRIAN", "cyclist": "CYCLIST",
                 "sign": "SIGN"}
LEVEL_2_MAX_POINTS = 5
_QUANT = 1_000_000


def default_score_cutoffs() -> np.ndarray:
    """0.00, 0.01, ..., 0.99, 1.00 as float32 (what the official configs put in `score_cutoffs`)."""
    return np.concatenate([np.float32(np.arange(100) * 0.01), np.float32([1.0])]).astype(np.float32)


def breakdown_name(waymo_type: str, level: int) -> str:
    """`OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1`, as `config_util.get_breakdown_names_from_config`."""
    return f"OBJECT_TYPE_TYPE_{waymo_type}_LEVEL_{level}"


def waymo_type_of(name: str) -> str | None:
    return _NAME_ALIASES.get(str(name).lower())


def heading_accuracy(pd_heading: np.ndarray, gt_heading: np.ndarray) -> np.ndarray:
    """`1 - min(|dh|, 2 pi - |dh|) / pi` in [0, 1] after wrapping both headings to [-pi, pi)."""
    a = (np.asarray(pd_heading, np.float64) + np.pi) % (2 * np.pi) - np.pi
    b = (np.asarray(gt_heading, np.float64) + np.pi) % (2 * np.pi) - np.pi
    diff = np.abs(a - b)
    diff = np.where(diff > np.pi, 2 * np.pi - diff, diff)
    return np.clip(1.0 - diff / np.pi, 0.0, 1.0)


def mean_average_precision(precisions: Sequence[float], recalls: Sequence[float], recall_delta: float = 0.05) -> float:
    """Area under the max-precision envelope, as the official `ComputeMeanAveragePrecision`.

    (recall, precision) points (plus (0, 1)) keep the best precision per recall; walking from the
    highest recall down, the envelope is the running max of precision; where two consecutive recalls
    are more than `recall_delta` apart, points at the envelope's precision are inserted every
    `recall_delta`; the point at recall 0 takes the precision of its neighbour; the area is the
    trapezoid sum. Nothing is added beyond the highest recall reached.
    """
    if not 0.0 < recall_delta <= 1.0:
        raise ValueError(f"recall_delta must be in (0, 1], got {recall_delta}")
    precisions = np.asarray(precisions, dtype=np.float32)
    recalls = np.asarray(recalls, dtype=np.float32)
    if precisions.shape != recalls.shape:
        raise ValueError(f"precisions {precisions.shape} and recalls {recalls.shape} differ in shape")
    if precisions.size == 0:
        return 0.0
    best: dict[float, float] = {0.0: 1.0}
    for p, r in zip(precisions.tolist(), recalls.tolist()):
        best[r] = max(best.get(r, 0.0), p)
    delta = np.float32(recall_delta)
    eps = np.float32(1e-6)
    curve: list[tuple[float, float]] = []          # (precision, recall), recall descending
    keys = sorted(best)
    last_recall = np.float32(keys[0])
    max_precision = np.float32(0.0)
    for r in reversed(keys):
        r32 = np.float32(r)
        while last_recall - r32 > delta + eps:
            last_recall = np.float32(last_recall - delta)
            curve.append((max_precision, last_recall))
        max_precision = max(np.float32(best[r]), max_precision)
        curve.append((max_precision, r32))
        last_recall = r32
    if len(curve) < 2:
        return 0.0
    curve[-1] = (curve[-2][0], curve[-1][1])
    area = np.float32(0.0)
    for (p0, r0), (p1, r1) in zip(curve[:-1], curve[1:]):
        area = np.float32(area + 0.5 * float(np.float32(r0 - r1)) * float(np.float32(p0 + p1)))
    return float(area)


def paired_iou_3d(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """`(P,)` 3D IoU of aligned pairs `boxes_a[i]`, `boxes_b[i]` (both `(P, 7+)`).

    The metric only needs the few nearby pairs, so it evaluates them one-to-one with the shared op
    `pc3d.ops.box_geometry.box_iou_3d_paired` (the diagonal of the dense `box_iou_3d`).
    """
    a = np.ascontiguousarray(np.asarray(boxes_a, dtype=np.float64)[:, :7])
    b = np.ascontiguousarray(np.asarray(boxes_b, dtype=np.float64)[:, :7])
    if a.shape != b.shape:
        raise ValueError(f"boxes_a {a.shape} and boxes_b {b.shape} must have the same shape")
    return box_iou_3d_paired(a, b, backend="numba")


def _to_numpy(t, dtype) -> np.ndarray | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=dtype)


class _ClassAccumulator:
    """Per-cut-off histograms for one Waymo type. `X[c] = sum_{k > c} hist[k]` gives the value at
    cut-off index c; a contribution v on cut-offs [lo, hi) is `hist[hi] += v; hist[lo] -= v`."""

    def __init__(self, num_cutoffs: int):
        size = num_cutoffs + 1
        self.active = np.zeros(size, np.int64)        # predictions with score >= cutoff
        self.tp = np.zeros(size, np.int64)
        self.sum_ha = np.zeros(size, np.float64)
        self.matched_l1 = np.zeros(size, np.int64)    # matched ground truths of difficulty <= 1
        self.matched_all = np.zeros(size, np.int64)
        self.num_gt_l1 = 0
        self.num_gt_all = 0

    @staticmethod
    def per_cutoff(hist: np.ndarray) -> np.ndarray:
        return np.cumsum(hist[::-1])[::-1][1:]


class WaymoDetectionMetric:
    """Streaming version of `waymo_metrics`: `update(pred, gt)` per frame, then `compute()`."""

    def __init__(self, class_names: Sequence[str] = ("Vehicle", "Pedestrian", "Cyclist"),
                 iou_thresholds: dict | None = None, score_cutoffs: Sequence[float] | None = None,
                 desired_recall_delta: float = 0.05, iou_fn: Callable | None = None):
        types = []
        for name in class_names:
            waymo_type = waymo_type_of(name)
            if waymo_type is None:
                raise ValueError(f"class_names: {name!r} is not a Waymo class (Vehicle, Pedestrian, Cyclist, Sign)")
            types.append(waymo_type)
        # report in the official breakdown order
        self.types = tuple(t for t in WAYMO_TYPES if t in types)
        self.iou_thresholds = dict(DEFAULT_IOU_THRESHOLDS, **(iou_thresholds or {}))
        cutoffs = default_score_cutoffs() if score_cutoffs is None else np.asarray(score_cutoffs, dtype=np.float32)
        if cutoffs.ndim != 1 or cutoffs.size == 0 or np.any(np.diff(cutoffs) <= 0):
            raise ValueError("score_cutoffs must be a non-empty strictly increasing sequence")
        self.score_cutoffs = cutoffs
        self.desired_recall_delta = float(desired_recall_delta)
        self.iou_fn = iou_fn
        self._acc = {t: _ClassAccumulator(cutoffs.size) for t in self.types}
        self.num_frames = 0

    # -- per frame ------------------------------------------------------------------------------
    def _split_by_type(self, boxes: Boxes3D, what: str):
        if not isinstance(boxes, Boxes3D):
            raise TypeError(f"{what}: expected Boxes3D, got {type(boxes).__name__}")
        arr = _to_numpy(boxes.boxes, np.float64)[:, :7]
        if arr.size and not np.isfinite(arr).all():
            raise ValueError(f"{what}: boxes contain NaN or inf")
        labels = _to_numpy(boxes.labels, np.int64)
        type_of_label = np.array([waymo_type_of(n) or "" for n in boxes.class_names] + [""], dtype=object)
        return arr, type_of_label[labels] if labels.size else np.zeros(0, dtype=object)

    def update(self, prediction: Boxes3D, ground_truth: Boxes3D) -> None:
        pd_boxes, pd_types = self._split_by_type(prediction, "prediction")
        gt_boxes, gt_types = self._split_by_type(ground_truth, "ground_truth")
        if len(prediction) and prediction.scores is None:
            raise ValueError("prediction: Boxes3D.scores is required for the Waymo metric")
        scores = _to_numpy(prediction.scores, np.float32) if len(prediction) else np.zeros(0, np.float32)
        if scores.size and not np.isfinite(scores).all():
            raise ValueError("prediction: scores contain NaN or inf")
        num_points = _to_numpy(ground_truth.num_points, np.int64)
        difficulty = _to_numpy(ground_truth.difficulty, np.int64)
        if difficulty is None:
            difficulty = (np.where(num_points <= LEVEL_2_MAX_POINTS, 2, 1) if num_points is not None
                          else np.ones(len(ground_truth), np.int64))
        keep = num_points > 0 if num_points is not None else np.ones(len(ground_truth), bool)
        self.num_frames += 1
        for waymo_type in self.types:
            pd_mask = pd_types == waymo_type
            gt_mask = (gt_types == waymo_type) & keep
            self._update_type(waymo_type, pd_boxes[pd_mask], scores[pd_mask], gt_boxes[gt_mask], difficulty[gt_mask])

    def _candidate_edges(self, waymo_type, pd: np.ndarray, gt: np.ndarray):
        """(pd index, gt index, iou) of pairs with iou >= threshold; IoU only for nearby pairs."""
        radius_pd = 0.5 * np.hypot(pd[:, 3], pd[:, 4])
        radius_gt = 0.5 * np.hypot(gt[:, 3], gt[:, 4])
        dx = pd[:, None, 0] - gt[None, :, 0]
        dy = pd[:, None, 1] - gt[None, :, 1]
        near = (dx * dx + dy * dy) < (radius_pd[:, None] + radius_gt[None, :]) ** 2
        near &= np.abs(pd[:, None, 2] - gt[None, :, 2]) < 0.5 * (pd[:, None, 5] + gt[None, :, 5])
        rows, cols = np.nonzero(near)
        if rows.size == 0:
            return rows, cols, np.zeros(0)
        if self.iou_fn is None:
            iou = paired_iou_3d(pd[rows], gt[cols])
        else:
            sub_pd, pd_index = np.unique(rows, return_inverse=True)
            sub_gt, gt_index = np.unique(cols, return_inverse=True)
            iou = np.asarray(_to_numpy(self.iou_fn(pd[sub_pd], gt[sub_gt]), np.float64))[pd_index, gt_index]
        ok = iou >= np.float32(self.iou_thresholds[waymo_type])
        return rows[ok], cols[ok], iou[ok]

    def _update_type(self, waymo_type, pd, scores, gt, difficulty) -> None:
        acc = self._acc[waymo_type]
        acc.num_gt_all += gt.shape[0]
        acc.num_gt_l1 += int((difficulty <= 1).sum())
        if pd.shape[0] == 0:
            return
        # number of cut-offs <= score: the prediction is active at cut-off indices [0, k)
        k = np.searchsorted(self.score_cutoffs, scores, side="right")
        acc.active += np.bincount(k, minlength=acc.active.size)
        if gt.shape[0] == 0:
            return
        rows, cols, iou = self._candidate_edges(waymo_type, pd, gt)
        if rows.size == 0:
            return
        ha = heading_accuracy(pd[rows, 6], gt[cols, 6])
        easy = difficulty[cols] <= 1
        pd_degree = np.bincount(rows, minlength=pd.shape[0])
        gt_degree = np.bincount(cols, minlength=gt.shape[0])
        single = (pd_degree[rows] == 1) & (gt_degree[cols] == 1)
        # An isolated edge is matched exactly while its prediction is active.
        hi = k[rows[single]]
        acc.tp += np.bincount(hi, minlength=acc.tp.size)
        acc.tp[0] -= hi.size
        acc.sum_ha += np.bincount(hi, weights=ha[single], minlength=acc.sum_ha.size)
        acc.sum_ha[0] -= ha[single].sum()
        acc.matched_all += np.bincount(hi, minlength=acc.tp.size)
        acc.matched_all[0] -= hi.size
        hi_easy = k[rows[single & easy]]
        acc.matched_l1 += np.bincount(hi_easy, minlength=acc.tp.size)
        acc.matched_l1[0] -= hi_easy.size
        if not single.all():
            self._solve_components(acc, rows[~single], cols[~single], iou[~single], ha[~single], k, difficulty)

    def _solve_components(self, acc, rows, cols, iou, ha, k, difficulty) -> None:
        from scipy.optimize import linear_sum_assignment
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        pd_ids = np.unique(rows)
        gt_ids = np.unique(cols)
        r = np.searchsorted(pd_ids, rows)
        c = np.searchsorted(gt_ids, cols) + pd_ids.size
        n = pd_ids.size + gt_ids.size
        graph = coo_matrix((np.ones(r.size), (r, c)), shape=(n, n))
        _, component = connected_components(graph, directed=False)
        edge_component = component[r]
        for comp in np.unique(edge_component):
            e = edge_component == comp
            comp_pd = np.unique(rows[e])
            comp_gt = np.unique(cols[e])
            weight = np.zeros((comp_pd.size, comp_gt.size), np.int64)
            heading = np.zeros((comp_pd.size, comp_gt.size))
            pi_ = np.searchsorted(comp_pd, rows[e])
            gi_ = np.searchsorted(comp_gt, cols[e])
            weight[pi_, gi_] = np.maximum(np.round(iou[e] * _QUANT).astype(np.int64), 1)
            heading[pi_, gi_] = ha[e]
            comp_k = k[comp_pd]
            comp_easy = difficulty[comp_gt] <= 1
            levels = np.unique(comp_k)[::-1]               # distinct activation levels, descending
            for s, level in enumerate(levels):
                if level == 0:
                    break
                lo = int(levels[s + 1]) if s + 1 < levels.size else 0
                active = np.nonzero(comp_k >= level)[0]
                sub = weight[active]
                a_rows, a_cols = linear_sum_assignment(sub, maximize=True)
                matched = sub[a_rows, a_cols] > 0
                a_rows, a_cols = a_rows[matched], a_cols[matched]
                count = a_rows.size
                ha_sum = heading[active[a_rows], a_cols].sum()
                easy_count = int(comp_easy[a_cols].sum())
                for hist, value in ((acc.tp, count), (acc.sum_ha, ha_sum), (acc.matched_all, count),
                                    (acc.matched_l1, easy_count)):
                    hist[level] += value
                    hist[lo] -= value

    # -- results --------------------------------------------------------------------------------
    def curves(self) -> dict:
        """Per breakdown name: dict of per-cut-off arrays tp, fp, fn, sum_ha, precision, recall,
        precision_ha (float32, as the official op) and the cut-offs."""
        out = {}
        for waymo_type in self.types:
            acc = self._acc[waymo_type]
            per = _ClassAccumulator.per_cutoff
            tp, active, sum_ha = per(acc.tp), per(acc.active), per(acc.sum_ha)
            fp = active - tp
            for level, num_gt, matched in ((1, acc.num_gt_l1, per(acc.matched_l1)), (2, acc.num_gt_all, per(acc.matched_all))):
                fn = num_gt - matched
                with np.errstate(divide="ignore", invalid="ignore"):
                    precision = np.where(active > 0, tp.astype(np.float32) / np.maximum(active, 1).astype(np.float32), 0.0).astype(np.float32)
                    precision_ha = np.where(active > 0, (sum_ha / np.maximum(active, 1)).astype(np.float32), 0.0).astype(np.float32)
                    recall = np.where(tp + fn > 0, tp.astype(np.float32) / np.maximum(tp + fn, 1).astype(np.float32), 0.0).astype(np.float32)
                precision = np.where(recall == 0, np.float32(1.0), precision)
                precision_ha = np.where(recall == 0, np.float32(1.0), precision_ha)
                out[breakdown_name(waymo_type, level)] = {
                    "score_cutoffs": self.score_cutoffs, "tp": tp, "fp": fp, "fn": fn, "sum_ha": sum_ha,
                    "precision": precision, "precision_ha": precision_ha, "recall": recall}
        return out

    def compute(self) -> dict:
        """`{"OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP": float, ".../APH": float, ...}`."""
        result = {}
        for name, curve in self.curves().items():
            result[f"{name}/AP"] = mean_average_precision(curve["precision"], curve["recall"], self.desired_recall_delta)
            result[f"{name}/APH"] = mean_average_precision(curve["precision_ha"], curve["recall"], self.desired_recall_delta)
        return result


def waymo_metrics(predictions: Sequence[Boxes3D], ground_truths: Sequence[Boxes3D],
                  class_names: Sequence[str] = ("Vehicle", "Pedestrian", "Cyclist"), *,
                  iou_thresholds: dict | None = None, score_cutoffs: Sequence[float] | None = None,
                  desired_recall_delta: float = 0.05, iou_fn: Callable | None = None,
                  frame_names: Sequence[str] | None = None) -> dict:
    """Waymo AP / APH per class and difficulty level over a list of frames.

    A ground-truth box with a NaN / inf value or a size that is not > 0 is an error naming the frame
    (`frame_names[k]`, else its index) and the box (`pc3d.structures.check_ground_truth`).

    Args:
        predictions: one `Boxes3D` per frame, with `scores`; labels name classes through its `class_names`.
        ground_truths: one `Boxes3D` per frame (same order); `difficulty` (1/2) and `num_points` used
            when present (boxes with 0 points are ignored, as the official tool does).
        class_names: which classes to evaluate (Vehicle, Pedestrian, Cyclist, optionally Sign).
        iou_thresholds: override per Waymo type, e.g. `{"VEHICLE": 0.5}`.
        iou_fn: optional dense `(boxes_a (N, 7), boxes_b (M, 7)) -> (N, M)` 3D IoU (e.g.
            `pc3d.ops.box_geometry.box_iou_3d`); default: `paired_iou_3d` on the nearby pairs only.
    Returns:
        dict keyed by the official breakdown names: `"OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1/AP"`,
        `".../APH"`, for LEVEL_1 and LEVEL_2 of each class.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"predictions has {len(predictions)} frames but ground_truths has {len(ground_truths)}")
    if frame_names is not None and len(frame_names) != len(ground_truths):
        raise ValueError(f"frame_names has {len(frame_names)} entries for {len(ground_truths)} frames")
    metric = WaymoDetectionMetric(class_names, iou_thresholds, score_cutoffs, desired_recall_delta, iou_fn)
    for k, (pred, gt) in enumerate(zip(predictions, ground_truths)):
        if isinstance(gt, Boxes3D):
            check_ground_truth(gt, repr(frame_names[k]) if frame_names is not None else f"#{k}")
        metric.update(pred, gt)
    return metric.compute()


def evaluate_objects_files(prediction_path, ground_truth_path,
                           class_names: Sequence[str] = ("Vehicle", "Pedestrian", "Cyclist"), iou_fn: Callable | None = None) -> dict:
    """Waymo metrics of two official `metrics_pb2.Objects` files (a submission and the ground truth).

    Ground-truth objects without lidar points are dropped and UNKNOWN difficulty is decided by the
    point count, as `compute_detection_metrics_main`; frames are the union of both files' frames.
    Refused (ValueError naming the file and the reason): a file with no object of a Waymo type (empty,
    or another proto), and predictions none of whose frames is a ground-truth frame.
    """
    from pc3d.evaluation.waymo_io import paired_frames, read_objects

    pred_frames: set = set()
    gt_frames: set = set()
    predictions = read_objects(prediction_path, require_objects=True, seen_frames=pred_frames)
    ground_truths = read_objects(ground_truth_path, drop_empty_ground_truth=True, require_objects=True,
                                 seen_frames=gt_frames)
    if not pred_frames & gt_frames:
        # AP 0 from a submission that names other frames (wrong context name, wrong file) looks like a
        # real score; refuse it
        p, g = sorted(pred_frames)[0], sorted(gt_frames)[0]
        raise ValueError(
            f"{prediction_path}: none of its {len(pred_frames)} frames (context_name, frame_timestamp_micros) is a "
            f"frame of the ground truth {ground_truth_path} ({len(gt_frames)} frames); e.g. {p} vs {g}")
    keys, preds, gts = paired_frames(predictions, ground_truths)
    return waymo_metrics(preds, gts, class_names, iou_fn=iou_fn, frame_names=[f"{c}/{t}" for c, t in keys])


def format_metrics(metrics: dict) -> str:
    """One line per breakdown: `OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1: [mAP 0.7] [mAPH 0.69]`."""
    names = []
    for key in metrics:
        name = key.rsplit("/", 1)[0]
        if name not in names:
            names.append(name)
    return "\n".join(f"{name}: [mAP {metrics[name + '/AP']:.6g}] [mAPH {metrics[name + '/APH']:.6g}]" for name in names)
