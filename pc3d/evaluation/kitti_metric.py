"""KITTI 3D object metric: 3D and BEV AP (R40 and R11) at easy / moderate / hard.

This is the metric OpenPCDet and mmdet3d print for KITTI (their `kitti_object_eval_python`, itself a port
of the official C++ devkit), re-implemented from its rules:

- Overlap thresholds: Car / Van / Truck 0.7, Pedestrian / Person_sitting / Cyclist 0.5 (3D and BEV).
- Difficulty (applied to ground truth): easy needs 2D box height > 40 px, occlusion <= 0, truncation
  <= 0.15; moderate > 25 px, <= 1, <= 0.30; hard > 25 px, <= 2, <= 0.50. A ground truth of the class that
  fails its difficulty is *ignored*: it is neither a miss nor does a detection on it count as false.
- Neighbour classes: for Car, `Van` ground truths are ignored (not misses); for Pedestrian, `Person_sitting`.
  Every other class is unrelated. `DontCare` regions only matter for the 2D image metric, which is not
  computed here (the C++ devkit also discounts detections on DontCare regions for 3D / BEV; the Python
  evaluator that OpenPCDet and mmdet3d print, reproduced here, does that for the 2D metric only).
- Detections whose 2D box is lower than the difficulty's minimum height are ignored (never false
  positives, never true positives).
- Matching, per frame and score threshold: ground truths in order, each takes the unassigned detection
  above the overlap threshold (strictly greater) with the highest score (first pass) or highest overlap
  (counting pass). Up to 41 score thresholds are taken from the matched scores at evenly spaced recall.
  Precision is made monotone from the right; AP_R40 averages recall points 1/40..1, AP_R11 0, 0.1, .., 1.
- A class with no valid ground truth at a difficulty scores 0 (as the reference does).
- The 41 recall samples assume many ground truths: with N < 41 valid ones even a perfect detector
  fills only the first N samples (one ground truth: R40 = 0, R11 = 9.09). The reference behaves the same.

Boxes are in KITTI's rectified camera frame: `(x, y, z, h, w, l, ry)` with (x, y, z) the bottom centre
(the label_2 layout; see pc3d.data.kitti). The rotated overlap is pc3d.ops' box IoU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numba import njit

from pc3d.data.kitti import KittiFrameBoxes  # noqa: F401  (re-exported: the metric's input type)
from pc3d.ops.box_geometry import box_iou_3d, box_iou_bev

DIFFICULTIES = ("easy", "moderate", "hard")
_MIN_HEIGHT = (40.0, 25.0, 25.0)
_MAX_OCCLUSION = (0, 1, 2)
_MAX_TRUNCATION = (0.15, 0.3, 0.5)
MIN_OVERLAP = {"Car": 0.7, "Van": 0.7, "Truck": 0.7, "Pedestrian": 0.5, "Person_sitting": 0.5, "Cyclist": 0.5}
# ground truths of these classes are ignored, not missed, when evaluating the key class
_NEIGHBOUR = {"car": "van", "pedestrian": "person_sitting"}
_SAMPLE_POINTS = 41


def _iou_layout(boxes_camera: np.ndarray) -> np.ndarray:
    """Camera boxes -> pc3d box rows in a right-handed 'camera BEV' frame: (x, z) on the ground, -y up.

    The camera y axis points down and (x, y, z) is the bottom centre, so the box spans [-y, -y + h]
    upwards: its centre height is -(y - h/2). Heading -ry rotates the (l, w) rectangle exactly as the
    KITTI devkit's corner construction does; any common rigid motion leaves IoU unchanged.
    """
    x, y, z, h, w, l, ry = boxes_camera.T
    return np.stack([x, z, -(y - h / 2), l, w, h, -ry], axis=1)


def _overlaps(dets: KittiFrameBoxes, gts: KittiFrameBoxes, kind: str) -> np.ndarray:
    out = np.zeros((len(dets), len(gts)))
    real = gts._lower != "dontcare"  # DontCare rows carry placeholder sizes (-1) and never match
    if len(dets) == 0 or not real.any():
        return out
    a, b = _iou_layout(dets.boxes_camera), _iou_layout(gts.boxes_camera[real])
    out[:, real] = box_iou_3d(a, b) if kind == "3d" else box_iou_bev(a, b)
    return out


@dataclass
class _Stacked:
    """Every frame's boxes concatenated (the per-frame Python loop was the cost: 17 s on 3769 frames)."""

    gt_lower: np.ndarray
    gt_height: np.ndarray
    gt_occluded: np.ndarray
    gt_truncated: np.ndarray
    gt_start: np.ndarray  # (F + 1,) offsets
    det_lower: np.ndarray
    det_height: np.ndarray
    det_scores: np.ndarray
    det_start: np.ndarray

    @classmethod
    def of(cls, gts: Sequence[KittiFrameBoxes], dets: Sequence[KittiFrameBoxes]) -> "_Stacked":
        def offsets(frames):
            return np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)

        def cat(arrays, dtype):
            return np.concatenate([np.asarray(a, dtype=dtype) for a in arrays]) if arrays else np.zeros(0, dtype)

        return cls(cat([g._lower for g in gts], object), cat([g.bbox[:, 3] - g.bbox[:, 1] for g in gts], np.float64),
                   cat([g.occluded for g in gts], np.int64), cat([g.truncated for g in gts], np.float64), offsets(gts),
                   cat([d._lower for d in dets], object), cat([np.abs(d.bbox[:, 3] - d.bbox[:, 1]) for d in dets], np.float64),
                   cat([d.scores for d in dets], np.float64), offsets(dets))


def _ignore_flags(st: _Stacked, cls: str, difficulty: int):
    """Per box: 0 = counts, 1 = ignored (neither hit nor miss), -1 = other class. Returns (gt, det, n_valid)."""
    cls = cls.lower()
    too_hard = ((st.gt_occluded > _MAX_OCCLUSION[difficulty]) | (st.gt_truncated > _MAX_TRUNCATION[difficulty])
                | (st.gt_height <= _MIN_HEIGHT[difficulty]))
    same = st.gt_lower == cls
    neighbour = st.gt_lower == _NEIGHBOUR.get(cls, "\0")
    gt_flag = np.full(len(same), -1, dtype=np.int64)
    gt_flag[neighbour | (same & too_hard)] = 1
    gt_flag[same & ~too_hard] = 0
    det_flag = np.where(st.det_lower == cls, 0, -1).astype(np.int64)
    det_flag[st.det_height < _MIN_HEIGHT[difficulty]] = 1  # too small in the image: ignored whatever its class
    return gt_flag, det_flag, int((gt_flag == 0).sum())


@njit(cache=True)
def _match(overlaps, gt_flag, det_flag, scores, min_overlap, score_threshold, counting, matched):
    """Greedy matching of one frame; the scores of counted matches go to `matched`. Returns (tp, fp).

    First pass (`counting` False): each ground truth takes the best-scoring free detection over the
    threshold; the matched scores of counted pairs give the score thresholds. Counting pass: detections
    under `score_threshold` are out, each ground truth prefers a counted detection with the largest
    overlap over an ignored one.
    """
    n_det, n_gt = overlaps.shape
    taken = np.zeros(n_det, dtype=np.bool_)
    below = np.zeros(n_det, dtype=np.bool_)
    if counting:
        for j in range(n_det):
            below[j] = scores[j] < score_threshold
    tp = 0
    none = -10000000.0
    for i in range(n_gt):
        if gt_flag[i] == -1:
            continue
        best = -1
        best_key = none
        best_overlap = 0.0
        best_is_ignored = False
        for j in range(n_det):
            if det_flag[j] == -1 or taken[j] or below[j]:
                continue
            ov = overlaps[j, i]
            if ov <= min_overlap:
                continue
            if not counting:
                if scores[j] > best_key:
                    best, best_key = j, scores[j]
            elif det_flag[j] == 0 and (ov > best_overlap or best_is_ignored):
                best, best_key, best_overlap, best_is_ignored = j, 1.0, ov, False
            elif det_flag[j] == 1 and best_key == none:
                best, best_key, best_is_ignored = j, 1.0, True
        if best_key == none:
            continue  # a miss when gt_flag is 0; misses are not needed (recall uses the valid count)
        taken[best] = True
        if gt_flag[i] == 0 and det_flag[best] == 0:
            matched[tp] = scores[best]
            tp += 1
    fp = 0
    if counting:
        for j in range(n_det):
            if not (taken[j] or det_flag[j] != 0 or below[j]):
                fp += 1
    return tp, fp


@njit(cache=True)
def _all_frames(flat_overlaps, overlap_start, gt_start, det_start, gt_flag, det_flag, scores, min_overlap,
                thresholds, counting):
    """`_match` over every frame: matched scores (first pass) or per-threshold (tp, fp) (counting pass)."""
    n_frames = gt_start.shape[0] - 1
    matched_all = np.empty(gt_flag.shape[0], dtype=np.float64)
    n_matched = 0
    n_thr = thresholds.shape[0] if counting else 1
    tp = np.zeros(n_thr, dtype=np.int64)
    fp = np.zeros(n_thr, dtype=np.int64)
    for f in range(n_frames):
        g0, g1, d0, d1 = gt_start[f], gt_start[f + 1], det_start[f], det_start[f + 1]
        ov = flat_overlaps[overlap_start[f]:overlap_start[f + 1]].reshape((d1 - d0, g1 - g0))
        buf = np.empty(g1 - g0, dtype=np.float64)
        for t in range(n_thr):
            threshold = thresholds[t] if counting else 0.0
            a, b = _match(ov, gt_flag[g0:g1], det_flag[d0:d1], scores[d0:d1], min_overlap, threshold, counting, buf)
            if counting:
                tp[t] += a
                fp[t] += b
            else:
                matched_all[n_matched:n_matched + a] = buf[:a]
                n_matched += a
    return matched_all[:n_matched], tp, fp


def _score_thresholds(matched_scores: np.ndarray, n_valid: int) -> np.ndarray:
    """Scores at which recall crosses each of the 41 sample points (KITTI devkit rule).

    Walking the matched scores from high to low, a score is kept when the recall it reaches is at least
    as close to the next sample point as the following score's recall would be (the last one is always kept).
    """
    scores = np.sort(matched_scores)[::-1]
    kept = []
    target = 0.0
    last = len(scores) - 1
    for i, score in enumerate(scores):
        left = (i + 1) / n_valid
        right = (i + 2) / n_valid if i < last else left
        if i < last and (right - target) < (target - left):
            continue
        kept.append(score)
        target += 1 / (_SAMPLE_POINTS - 1.0)
    return np.asarray(kept, dtype=np.float64)


def _precision_curve(st: _Stacked, overlaps, cls, difficulty, min_overlap) -> np.ndarray:
    flat, overlap_start = overlaps
    gt_flag, det_flag, n_valid = _ignore_flags(st, cls, difficulty)
    args = (flat, overlap_start, st.gt_start, st.det_start, gt_flag, det_flag, st.det_scores, float(min_overlap))
    matched, _, _ = _all_frames(*args, np.zeros(0), False)
    thresholds = _score_thresholds(matched, n_valid)
    precision = np.zeros(_SAMPLE_POINTS)
    if len(thresholds):
        _, tp, fp = _all_frames(*args, thresholds, True)
        precision[:len(thresholds)] = tp / (tp + fp)
    return np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond


def kitti_metrics(ground_truths: Sequence[KittiFrameBoxes], detections: Sequence[KittiFrameBoxes],
                  classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist")) -> dict:
    """AP in percent keyed `kitti/<Class>/<3d|bev>_<R40|R11>/<easy|moderate|hard>`, frames paired in order."""
    if len(ground_truths) != len(detections):
        raise ValueError(f"kitti_metrics: {len(ground_truths)} ground-truth frames but {len(detections)} detection frames")
    for k, dets in enumerate(detections):
        if dets.scores is None:
            raise ValueError(f"kitti_metrics: detections of frame {k} ({dets.frame_id!r}) have no scores")
    unknown = [c for c in classes if c not in MIN_OVERLAP]
    if unknown:
        raise ValueError(f"kitti_metrics: no KITTI overlap threshold for class(es) {unknown}; known: {list(MIN_OVERLAP)}")
    out = {}
    stacked = _Stacked.of(ground_truths, detections)
    for kind in ("3d", "bev"):
        blocks = [_overlaps(d, g, kind).ravel() for g, d in zip(ground_truths, detections)]
        overlaps = (np.concatenate(blocks) if blocks else np.zeros(0),
                    np.concatenate([[0], np.cumsum([len(b) for b in blocks])]).astype(np.int64))
        for cls in classes:
            for level, name in enumerate(DIFFICULTIES):
                precision = _precision_curve(stacked, overlaps, cls, level, MIN_OVERLAP[cls])
                out[f"kitti/{cls}/{kind}_R40/{name}"] = float(precision[1:].sum() / 40 * 100)
                out[f"kitti/{cls}/{kind}_R11/{name}"] = float(precision[::4].sum() / 11 * 100)
    return out


def format_kitti_metrics(metrics: dict) -> str:
    """A table like OpenPCDet's log: one row per class and metric, easy / moderate / hard."""
    rows = {}
    for key, value in metrics.items():
        if key.startswith("kitti/"):
            _, cls, kind, level = key.split("/")
            rows.setdefault((cls, kind), {})[level] = value
    lines = [f"{'KITTI AP':24s} {'easy':>8s} {'moderate':>8s} {'hard':>8s}"]
    for (cls, kind), vals in rows.items():
        lines.append(f"{cls + ' ' + kind:24s} " + " ".join(f"{vals.get(d, float('nan')):8.4f}" for d in DIFFICULTIES))
    return "\n".join(lines)
