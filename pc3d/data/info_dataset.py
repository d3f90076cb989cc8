"""The on-disk pc3d dataset format, shared by the synthetic writer and the Waymo converter.

Layout of a dataset root:
    <root>/<split>_infos.json
    <root>/points/<frame_id>.npy          float32 (N, C), columns named by "point_features"

`<split>_infos.json`:
    {"dataset": "synthetic", "class_names": [...], "point_features": ["x", "y", "z", "intensity"],
     "frames": [{"frame_id": str, "points": "points/<id>.npy", "boxes": [[x, y, z, dx, dy, dz, heading], ...],
                 "labels": [class name, ...], "difficulty": [1|2, ...], "num_points": [int, ...]}, ...]}
Paths are relative to the info file's folder. Boxes follow docs/conventions.md.

Multi-frame input (`sweeps` > 1, Waymo): `<root>/<split>_poses.json` maps frame id -> 4x4 vehicle-to-global
pose (written by `create_data.py waymo`). The previous `sweeps - 1` frames of the same segment (`context_name`,
ordered by `timestamp` in microseconds) are moved into the current vehicle frame with
`inverse(pose_now) @ pose_then` and stacked under the current points, with a `time_lag` column (seconds
since that frame; 0 for the current one), as nuScenes sweeps are. A segment's first frames use what
history they have.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pc3d.data.class_map import resolve_class_map
from pc3d.structures import Boxes3D, Frame, PointCloud, check_ground_truth


def read_infos(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset info file not found: {path}")
    try:
        infos = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt info file ({err})") from err
    for key in ("class_names", "point_features", "frames"):
        if key not in infos:
            raise ValueError(f"{path}: info file has no '{key}' entry")
    return infos


class InfoDataset(torch.utils.data.Dataset):
    """Frames of a pc3d info file as `Frame`s, boxes restricted to `class_names`.

    `point_features` selects (and orders) the point columns a model reads; `transform` (e.g. the
    training augmentation) maps a `Frame` to a `Frame`.
    """

    def __init__(self, root, split: str, class_names: Sequence[str], point_features: Sequence[str],
                 transform: Callable[[Frame], Frame] | None = None, max_frames: int | None = None,
                 class_map: dict | None = None, sweeps: int = 1):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root does not exist: {self.root}")
        self.info_path = self.root / f"{split}_infos.json"
        infos = read_infos(self.info_path)
        self.split = split
        self.class_names = tuple(class_names)
        # file class name -> config class name; a config class no file class maps to is an error
        self.file_to_class = resolve_class_map(self.class_names, class_map, tuple(infos["class_names"]),
                                               f"{self.info_path}")
        if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 1:
            raise ValueError(f"dataset.sweeps must be an int >= 1, got {sweeps!r}")
        self.sweeps = sweeps
        self.file_features = tuple(infos["point_features"]) + (("time_lag",) if sweeps > 1 else ())
        self.point_features = tuple(point_features)
        missing = [f for f in self.point_features if f not in self.file_features]
        if missing:
            raise ValueError(f"{self.info_path}: point features {missing} requested but the files have {list(self.file_features)}")
        self.frames = infos["frames"][:max_frames] if max_frames else infos["frames"]
        self.transform = transform
        self.history: list[list[dict]] = []
        self.poses: dict = {}
        if sweeps > 1:
            self._index_history(infos["frames"])

    def _index_history(self, all_frames: list[dict]) -> None:
        pose_path = self.root / f"{self.split}_poses.json"
        if not pose_path.is_file():
            raise FileNotFoundError(f"dataset.sweeps = {self.sweeps} needs {pose_path} (frame poses; re-run "
                                    "tools/create_data.py waymo to write it)")
        self.poses = json.loads(pose_path.read_text())
        by_segment: dict[str, list[dict]] = {}
        for info in all_frames:
            for key in ("context_name", "timestamp"):
                if key not in info:
                    raise ValueError(f"{self.info_path}: frame {info.get('frame_id')!r} has no '{key}' "
                                     f"(needed for dataset.sweeps > 1)")
            by_segment.setdefault(info["context_name"], []).append(info)
        for items in by_segment.values():
            items.sort(key=lambda item: item["timestamp"])
        for info in self.frames:
            items = by_segment[info["context_name"]]
            k = next(i for i, item in enumerate(items) if item["frame_id"] == info["frame_id"])
            self.history.append(items[max(0, k - self.sweeps + 1):k][::-1])   # nearest first

    def _pose(self, info) -> np.ndarray:
        if info["frame_id"] not in self.poses:
            raise ValueError(f"{self.root / (self.split + '_poses.json')}: no pose for frame {info['frame_id']!r}")
        return np.asarray(self.poses[info["frame_id"]], dtype=np.float64)

    def _load_points(self, info) -> np.ndarray:
        path = self.root / info["points"]
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read points of frame {info['frame_id']!r} ({err})") from err

    def _multi_frame_points(self, index: int, points: np.ndarray) -> np.ndarray:
        info = self.frames[index]
        parts = [np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1)]
        to_current = np.linalg.inv(self._pose(info))
        for past in self.history[index]:
            pts = self._load_points(past).astype(np.float32)
            moved = to_current @ self._pose(past)
            xyz = pts[:, :3].astype(np.float64) @ moved[:3, :3].T + moved[:3, 3]
            lag = (info["timestamp"] - past["timestamp"]) * 1e-6
            pts = np.concatenate([xyz.astype(np.float32), pts[:, 3:], np.full((len(pts), 1), lag, np.float32)], axis=1)
            parts.append(pts)
        return np.concatenate(parts)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> Frame:
        info = self.frames[index]
        points = self._load_points(info)
        if self.sweeps > 1:
            points = self._multi_frame_points(index, points)
        cloud = PointCloud(points, self.file_features).select_features(self.point_features)
        frame = Frame(cloud, self.boxes_of(index), str(info["frame_id"]), {"split": self.split})
        return self.transform(frame) if self.transform is not None else frame

    def boxes_of(self, index: int) -> Boxes3D:
        """Ground truth of frame `index` restricted to this dataset's classes (no point loading)."""
        info = self.frames[index]
        # reject (never drop) a NaN / non-positive-size box, indexed as in the file: docs/conventions.md
        check_ground_truth(np.asarray(info["boxes"], dtype=np.float64), f"{info['frame_id']!r} of {self.info_path}")
        keep = [i for i, name in enumerate(info["labels"]) if name in self.file_to_class]
        if not keep:
            return Boxes3D.empty(self.class_names)
        boxes = np.asarray(info["boxes"], dtype=np.float32)[keep]
        labels = [self.class_names.index(self.file_to_class[info["labels"][i]]) for i in keep]
        difficulty = [info["difficulty"][i] for i in keep] if "difficulty" in info else None
        num_points = [info["num_points"][i] for i in keep] if "num_points" in info else None
        return Boxes3D(boxes, labels, self.class_names, None, difficulty, num_points)
