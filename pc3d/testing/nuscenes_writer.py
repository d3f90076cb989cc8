"""Write pc3d frames (e.g. synthetic ones) as a nuScenes-format database (tables + `.pcd.bin` sweeps).

Each frame becomes a one-sample scene with a non-trivial ego pose and LIDAR_TOP calibration, so the
devkit's own loaders and `DetectionEval` run on it end to end. The split is a custom one, written to
`<version>/splits.json`, as the devkit supports.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pc3d.evaluation.nuscenes_eval import default_attribute
from pc3d.structures import Frame

DETECTION_TO_CATEGORY = {
    "car": "vehicle.car", "truck": "vehicle.truck", "construction_vehicle": "vehicle.construction",
    "bus": "vehicle.bus.rigid", "trailer": "vehicle.trailer", "barrier": "movable_object.barrier",
    "motorcycle": "vehicle.motorcycle", "bicycle": "vehicle.bicycle", "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
}
SYNTHETIC_TO_DETECTION = {"Vehicle": "car", "Pedestrian": "pedestrian", "Cyclist": "bicycle"}
ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
              "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)


def _token(*parts) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _quat_z(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _pose(yaw: float, translation) -> np.ndarray:
    t = np.eye(4)
    t[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    t[:3, 3] = translation
    return t


def write_nuscenes_tables(frames: Sequence[Frame], root, version: str = "v1.0-pc3d", split: str = "synthetic_val",
                          class_to_detection: Mapping[str, str] = SYNTHETIC_TO_DETECTION, seed: int = 0) -> list[str]:
    """Write the database; returns the sample tokens in frame order."""
    root = Path(root)
    tables_dir = root / version
    (root / "samples" / "LIDAR_TOP").mkdir(parents=True, exist_ok=True)
    (root / "maps").mkdir(parents=True, exist_ok=True)
    tables_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = {name: [] for name in ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
                               "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")}
    for name in DETECTION_TO_CATEGORY.values():
        t["category"].append({"token": _token("category", name), "name": name, "description": name})
    for name in ATTRIBUTES:
        t["attribute"].append({"token": _token("attribute", name), "name": name, "description": name})
    t["visibility"].append({"token": "4", "level": "v80-100", "description": "visible"})
    sensor = _token("sensor", "LIDAR_TOP")
    t["sensor"].append({"token": sensor, "channel": "LIDAR_TOP", "modality": "lidar"})
    log = _token("log", seed)
    t["log"].append({"token": log, "logfile": "pc3d-synthetic", "vehicle": "pc3d", "date_captured": "2026-01-01",
                     "location": "synthetic"})
    _write_blank_map(root / "maps" / "synthetic.png")
    t["map"].append({"token": _token("map"), "log_tokens": [log], "category": "semantic_prior",
                     "filename": "maps/synthetic.png"})
    scene_names, sample_tokens = [], []
    for i, frame in enumerate(frames):
        lidar_yaw = float(rng.uniform(-math.pi, math.pi))  # a calibration that is not the identity
        ego_yaw = float(rng.uniform(-math.pi, math.pi))
        ego_xyz = [float(rng.uniform(-500, 500)), float(rng.uniform(-500, 500)), 0.0]
        lidar_to_global = _pose(ego_yaw, ego_xyz) @ _pose(lidar_yaw, LIDAR_TRANSLATION)
        timestamp = 1_600_000_000_000_000 + i * 20_000_000
        scene, sample, sd = _token("scene", seed, i), _token("sample", seed, i), _token("sd", seed, i)
        cs, pose = _token("cs", seed, i), _token("pose", seed, i)
        name = f"synthetic-{seed}-{i:05d}"
        scene_names.append(name)
        sample_tokens.append(sample)
        t["calibrated_sensor"].append({"token": cs, "sensor_token": sensor, "translation": list(LIDAR_TRANSLATION),
                                       "rotation": _quat_z(lidar_yaw), "camera_intrinsic": []})
        t["ego_pose"].append({"token": pose, "timestamp": timestamp, "rotation": _quat_z(ego_yaw), "translation": ego_xyz})
        filename = f"samples/LIDAR_TOP/{name}.pcd.bin"
        pts = frame.points.points.numpy()
        intensity = pts[:, 3] * 255.0 if pts.shape[1] > 3 else np.zeros(len(pts))
        np.stack([pts[:, 0], pts[:, 1], pts[:, 2], intensity, np.zeros(len(pts))], 1).astype(np.float32).tofile(root / filename)
        t["sample_data"].append({"token": sd, "sample_token": sample, "ego_pose_token": pose, "calibrated_sensor_token": cs,
                                 "timestamp": timestamp, "fileformat": "pcd", "is_key_frame": True, "height": 0, "width": 0,
                                 "filename": filename, "prev": "", "next": ""})
        anns = _annotations(frame, sample, lidar_to_global, class_to_detection, (seed, i), t)
        t["sample"].append({"token": sample, "timestamp": timestamp, "prev": "", "next": "", "scene_token": scene})
        t["scene"].append({"token": scene, "log_token": log, "nbr_samples": 1, "first_sample_token": sample,
                           "last_sample_token": sample, "name": name, "description": "pc3d synthetic frame"})
        del anns
    for name, rows in t.items():
        (tables_dir / f"{name}.json").write_text(json.dumps(rows))
    (tables_dir / "splits.json").write_text(json.dumps({split: scene_names}))
    return sample_tokens


def _annotations(frame: Frame, sample: str, lidar_to_global: np.ndarray, class_to_detection, key, t) -> list[str]:
    boxes = frame.gt_boxes
    tokens = []
    if boxes is None:
        return tokens
    rot = lidar_to_global[:3, :3]
    yaw_offset = math.atan2(rot[1, 0], rot[0, 0])
    for j in range(len(boxes)):
        b = boxes.boxes[j].double().numpy()
        detection = class_to_detection.get(boxes.class_names[int(boxes.labels[j])])
        if detection is None:
            continue
        centre = rot @ b[:3] + lidar_to_global[:3, 3]
        velocity = rot @ np.array([b[7], b[8], 0.0]) if boxes.has_velocity else np.zeros(3)
        attribute = default_attribute(detection, float(np.hypot(velocity[0], velocity[1])))
        instance, ann = _token("instance", *key, j), _token("ann", *key, j)
        category = _token("category", DETECTION_TO_CATEGORY[detection])
        num_points = int(boxes.num_points[j]) if boxes.num_points is not None else 1
        t["instance"].append({"token": instance, "category_token": category, "nbr_annotations": 1,
                              "first_annotation_token": ann, "last_annotation_token": ann})
        t["sample_annotation"].append({
            "token": ann, "sample_token": sample, "instance_token": instance, "visibility_token": "4",
            "attribute_tokens": [_token("attribute", attribute)] if attribute else [],
            "translation": centre.tolist(), "size": [b[4], b[3], b[5]], "rotation": _quat_z(b[6] + yaw_offset),
            "prev": "", "next": "", "num_lidar_pts": num_points, "num_radar_pts": 0})
        tokens.append(ann)
    return tokens


def _write_blank_map(path: Path) -> None:
    from PIL import Image

    Image.new("L", (8, 8), 0).save(path)
