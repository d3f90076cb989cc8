"""nuScenes detection metrics through the devkit's `DetectionEval` (mAP, TP errors, NDS).

pc3d only converts boxes (key LIDAR_TOP frame -> global) into the devkit's JSON submission format;
matching and scoring are the devkit's own.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pc3d.structures import Boxes3D

# Attribute of a predicted box from its class and speed, as CenterPoint / mmdet3d submit them.
_MOVING_SPEED = 0.2


def default_attribute(name: str, speed: float) -> str:
    moving = speed > _MOVING_SPEED
    if name in ("car", "construction_vehicle", "bus", "truck", "trailer"):
        if moving:
            return "vehicle.moving"
        return "vehicle.stopped" if name in ("bus",) else "vehicle.parked"
    if name in ("bicycle", "motorcycle"):
        return "cycle.with_rider" if moving else "cycle.without_rider"
    if name == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return ""


def boxes_to_submission(nusc, sample_token: str, boxes: Boxes3D,
                        class_to_detection: Mapping[str, str] | None = None) -> list[dict]:
    """pc3d boxes of one sample (key LIDAR_TOP frame) -> devkit result dicts in the global frame."""
    from pyquaternion import Quaternion

    from pc3d.data.nuscenes import sensor_to_global

    sample = nusc.get("sample", sample_token)
    to_global = sensor_to_global(nusc, sample["data"]["LIDAR_TOP"])
    rot = to_global[:3, :3]
    out = []
    if boxes.scores is None and len(boxes):
        raise ValueError(f"predictions for sample {sample_token} have no scores")
    for i in range(len(boxes)):
        b = boxes.boxes[i].double().numpy()
        name = boxes.class_names[int(boxes.labels[i])]
        name = class_to_detection.get(name, name) if class_to_detection else name
        centre = rot @ b[:3] + to_global[:3, 3]
        heading_rot = rot @ np.array([[math.cos(b[6]), -math.sin(b[6]), 0], [math.sin(b[6]), math.cos(b[6]), 0], [0, 0, 1]])
        quat = Quaternion(matrix=heading_rot, atol=1e-6)
        velocity = (rot @ np.array([b[7], b[8], 0.0]))[:2] if boxes.has_velocity else np.zeros(2)
        out.append({"sample_token": sample_token, "translation": centre.tolist(), "size": [b[4], b[3], b[5]],
                    "rotation": list(quat.elements), "velocity": velocity.tolist(), "detection_name": name,
                    "detection_score": float(boxes.scores[i]),
                    "attribute_name": default_attribute(name, float(np.hypot(*velocity)))})
    return out


def write_submission(results: Mapping[str, list[dict]], path) -> Path:
    """The devkit's submission JSON (`meta` + `results`), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False},
           "results": dict(results)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    return path


def detection_config(classes: Sequence[str] | None = None):
    """The devkit's `detection_cvpr_2019` config, optionally restricted to `classes`.

    The devkit averages mAP / TP errors over the config's classes, and its constructor insists on all
    ten; a dataset with fewer classes (the synthetic one has car, pedestrian, bicycle) would score a
    perfect detector at 0.3 mAP. The restricted config keeps every threshold and rule of the official
    one and only narrows the class list the averages run over.
    """
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.data_classes import DetectionConfig

    cfg = config_factory("detection_cvpr_2019")
    if classes is None:
        return cfg
    unknown = [c for c in classes if c not in cfg.class_range]
    if unknown:
        raise ValueError(f"classes {unknown} are not nuScenes detection classes {list(cfg.class_range)}")
    restricted = DetectionConfig.__new__(DetectionConfig)  # bypasses the all-ten-classes assertion only
    restricted.__dict__.update(cfg.__dict__)
    restricted.class_range = {c: cfg.class_range[c] for c in classes}
    restricted.class_names = list(restricted.class_range)
    return restricted


def evaluate_nuscenes(nusc, predictions: Mapping[str, Boxes3D], eval_set: str, output_dir,
                      classes: Sequence[str] | None = None,
                      class_to_detection: Mapping[str, str] | None = None) -> dict:
    """Run `DetectionEval`; returns `{"mAP", "NDS", "mATE", ..., "AP/<class>"}` plus the devkit summary.

    `predictions` maps every sample token of `eval_set` to its boxes (key LIDAR_TOP frame).
    """
    from nuscenes.eval.detection.evaluate import DetectionEval

    output_dir = Path(output_dir)
    results = {token: boxes_to_submission(nusc, token, boxes, class_to_detection) for token, boxes in predictions.items()}
    result_path = write_submission(results, output_dir / "results_nusc.json")
    evaluator = DetectionEval(nusc, detection_config(classes), str(result_path), eval_set, str(output_dir), verbose=False)
    summary = evaluator.main(plot_examples=0, render_curves=False)
    metrics = {"mAP": summary["mean_ap"], "NDS": summary["nd_score"]}
    names = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}
    for key, short in names.items():
        metrics[short] = summary["tp_errors"][key]
    for cls, ap in summary["mean_dist_aps"].items():
        metrics[f"AP/{cls}"] = ap
    metrics["devkit_summary"] = summary
    return metrics
