"""nuScenes (and Lyft, which shares its table schema) through `nuscenes-devkit`.

Frames are in the key frame's LIDAR_TOP frame, as the devkit and every published nuScenes model
define it (x right, y forward, z up; see docs/conventions.md). A frame merges the key sweep with up
to `sweeps - 1` earlier sweeps moved into the key frame, with a `time_lag` feature (seconds before
the key frame). Boxes carry velocity `(vx, vy)` in the same frame.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pc3d.structures import Boxes3D, Frame, PointCloud, check_ground_truth

NUSCENES_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
                    "pedestrian", "traffic_cone")
NUSCENES_FILE_FEATURES = ("x", "y", "z", "intensity", "ring")
NUSCENES_FEATURES = ("x", "y", "z", "intensity", "time_lag")


def find_version(root) -> str:
    """The table folder under `root` (e.g. `v1.0-trainval`, `v1.0-mini`, `v1.01-train`)."""
    root = Path(root)
    candidates = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "sample.json").is_file()) if root.is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"no nuScenes table folder (<version>/sample.json) under {root}")
    return candidates[0]


def load_nuscenes(root, version: str | None = None):
    from nuscenes.nuscenes import NuScenes

    root = Path(root)
    version = version or find_version(root)
    return NuScenes(version=version, dataroot=str(root), verbose=False)


def _transform(rotation_wxyz, translation) -> np.ndarray:
    from pyquaternion import Quaternion

    t = np.eye(4)
    t[:3, :3] = Quaternion(rotation_wxyz).rotation_matrix
    t[:3, 3] = translation
    return t


def sensor_to_global(nusc, sample_data_token: str) -> np.ndarray:
    """4x4 transform of a sample_data's sensor frame into the global frame."""
    sd = nusc.get("sample_data", sample_data_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    return _transform(pose["rotation"], pose["translation"]) @ _transform(cs["rotation"], cs["translation"])


def read_sweep(nusc, sample_data_token: str) -> np.ndarray:
    from pc3d.io.points import read_points

    path = Path(nusc.get_sample_data_path(sample_data_token))
    return read_points(path, dim=5)


def load_lidar_points(nusc, sample_token: str, sweeps: int = 10) -> np.ndarray:
    """(N, 5) x, y, z, intensity, time_lag of the key sweep plus earlier sweeps, in the key LIDAR_TOP frame."""
    sample = nusc.get("sample", sample_token)
    key_token = sample["data"]["LIDAR_TOP"]
    key = nusc.get("sample_data", key_token)
    global_to_key = np.linalg.inv(sensor_to_global(nusc, key_token))
    parts, token = [], key_token
    for _ in range(max(1, sweeps)):
        sd = nusc.get("sample_data", token)
        pts = read_sweep(nusc, token)
        lag = (key["timestamp"] - sd["timestamp"]) * 1e-6
        if token != key_token:
            t = global_to_key @ sensor_to_global(nusc, token)
            pts = pts.copy()
            pts[:, :3] = pts[:, :3] @ t[:3, :3].T + t[:3, 3]
        parts.append(np.concatenate([pts[:, :4], np.full((len(pts), 1), lag, np.float32)], axis=1))
        if not sd["prev"]:
            break
        token = sd["prev"]
    return np.concatenate(parts).astype(np.float32)


def load_boxes(nusc, sample_token: str, class_names: Sequence[str]) -> Boxes3D:
    """Annotations of a sample as (M, 9) boxes (with velocity) in the key LIDAR_TOP frame."""
    from nuscenes.eval.detection.utils import category_to_detection_name
    from pyquaternion import Quaternion

    sample = nusc.get("sample", sample_token)
    global_to_key = np.linalg.inv(sensor_to_global(nusc, sample["data"]["LIDAR_TOP"]))
    rot = global_to_key[:3, :3]
    boxes, labels, num_points = [], [], []
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        name = category_to_detection_name(ann["category_name"])
        if name is None and ann["category_name"] in class_names:
            name = ann["category_name"]  # Lyft tables name their categories by class already
        if name is None or name not in class_names:
            continue
        centre = global_to_key[:3, :3] @ np.asarray(ann["translation"]) + global_to_key[:3, 3]
        forward = rot @ Quaternion(ann["rotation"]).rotation_matrix[:, 0]
        try:
            velocity = nusc.box_velocity(ann_token)
        except KeyError:  # trimmed tables whose prev/next annotations are missing
            velocity = np.full(3, np.nan)
        velocity = np.nan_to_num(rot @ np.nan_to_num(velocity), nan=0.0)
        w, l, h = ann["size"]
        boxes.append([*centre, l, w, h, np.arctan2(forward[1], forward[0]), velocity[0], velocity[1]])
        labels.append(list(class_names).index(name))
        num_points.append(ann["num_lidar_pts"])
    if not boxes:
        return Boxes3D.empty(class_names, with_velocity=True)
    num_points = np.asarray(num_points)
    # reject (never drop) a NaN / non-positive-size box: docs/conventions.md "Ground truth"
    check_ground_truth(np.asarray(boxes, np.float64), f"sample {sample_token}")
    return Boxes3D(np.asarray(boxes, np.float32), labels, tuple(class_names), None,
                   np.where(num_points <= 5, 2, 1), num_points)


def split_sample_tokens(nusc, split: str) -> list[str]:
    """Sample tokens of a predefined devkit split (train, val, mini_val, ...), a custom split from
    `<version>/splits.json`, or `all`."""
    if split == "all":
        return [s["token"] for s in nusc.sample]
    from nuscenes.utils.splits import create_splits_scenes, get_scenes_of_custom_split, is_predefined_split

    scenes = set(create_splits_scenes()[split] if is_predefined_split(split) else get_scenes_of_custom_split(split, nusc))
    scene_names = {s["token"]: s["name"] for s in nusc.scene}
    return [s["token"] for s in nusc.sample if scene_names[s["scene_token"]] in scenes]


class NuScenesDataset(torch.utils.data.Dataset):
    """nuScenes key frames (with sweeps) as `Frame`s; `frame_id` is the sample token."""

    def __init__(self, root, split: str, class_names: Sequence[str] = NUSCENES_CLASSES,
                 point_features: Sequence[str] = NUSCENES_FEATURES, transform: Callable[[Frame], Frame] | None = None,
                 sweeps: int = 10, version: str | None = None):
        self.nusc = load_nuscenes(root, version)
        self.split = split
        self.sample_tokens = split_sample_tokens(self.nusc, split)
        self.class_names = tuple(class_names)
        self.point_features = tuple(point_features)
        self.sweeps = sweeps
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def boxes_of(self, index: int) -> Boxes3D:
        return load_boxes(self.nusc, self.sample_tokens[index], self.class_names)

    def __getitem__(self, index: int) -> Frame:
        token = self.sample_tokens[index]
        points = load_lidar_points(self.nusc, token, self.sweeps)
        cloud = PointCloud(points, NUSCENES_FEATURES).select_features(self.point_features)
        frame = Frame(cloud, self.boxes_of(index), token, {"dataset": "nuscenes"})
        return self.transform(frame) if self.transform is not None else frame
